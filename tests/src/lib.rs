//! Helpers for integration tests that start real broker processes.
