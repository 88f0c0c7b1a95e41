//! Shared helpers for Sluice's benchmarks: workload data that every bench builds alike.
