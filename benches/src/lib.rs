//! Shared helpers for Sluice's benchmarks: workload data that every bench builds alike.

use sluice_proto::batch::header::{
    BASE_TIMESTAMP, BATCH_LENGTH, HEADER_LEN, LAST_OFFSET_DELTA, LOG_OVERHEAD, MAGIC, MAGIC_POS,
    MAX_TIMESTAMP, RECORD_COUNT,
};

/// A batch of `records` records of `record_bytes` each, about as large as a producer
/// would send. The log only reads batch headers, so the record area is filler of the
/// right size; codec benches build real records instead.
pub fn storage_batch(records: u32, record_bytes: usize) -> Vec<u8> {
    // Kafka's per-record framing is ~8 bytes for small keyless records.
    let body = records as usize * (record_bytes + 8);
    let mut b = vec![0u8; HEADER_LEN + body];
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
    b[MAGIC_POS] = MAGIC;
    b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
        .copy_from_slice(&(records as i32 - 1).to_be_bytes());
    b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&(records as i32).to_be_bytes());
    for (i, x) in b[HEADER_LEN..].iter_mut().enumerate() {
        *x = (i * 31 % 251) as u8;
    }
    b
}
