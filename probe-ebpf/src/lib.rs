//! eBPF redirect probe: C programs built with clang, loaded with aya (in progress).
