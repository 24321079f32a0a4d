//! Types shared by the probe's kernel side (`probe-ebpf`) and its user side (`probe`).
//!
//! Everything here is `#[repr(C)]` and `no_std`; the kernel writes these into maps and the
//! user side reads them back byte for byte. Filled in by the eBPF backend work.
#![no_std]
