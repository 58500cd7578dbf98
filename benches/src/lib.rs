//! Shared helpers for the benchmarks (generated clusters).
