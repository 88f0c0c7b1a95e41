#![no_main]

#[path = "../checks/proto.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::request_decode(data));
