#![no_main]

#[path = "../checks/broker.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::peer_request_decode(data));
