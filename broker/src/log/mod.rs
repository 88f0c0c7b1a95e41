//! A partition's segmented, memory-mapped log.
