//! Capture backends: where packets come from. Each one feeds the platform-free
//! [`crate::table::FlowTable`] with cumulative per-key counters and rare events (first packet, first
//! payload, FIN/RST), behind the one [`Backend`] trait the engine drives:
//!
//! - `ebpf` (Linux): a TC classifier counts in the kernel; the probe reads its maps.
//! - `pcap`: libpcap copies headers to user space, where [`accumulate`] counts them.
//! - `replay`: a capture file and the spans sent during it, in time order (`analyze`).
//!
//! A new backend implements [`Backend`] and, for live capture, gets a [`BackendKind`] arm
//! in [`open`]. Platform `#[cfg]`s live here and in the backends, nowhere else.

pub mod accumulate;
mod capture;
#[cfg(target_os = "linux")]
pub mod ebpf;
#[cfg(target_os = "linux")]
pub mod ebpf_object;
mod factory;
#[cfg(target_os = "linux")]
mod flow_maps;
#[cfg(target_os = "linux")]
pub mod kernel_run;
#[cfg(target_os = "linux")]
mod map_batch;
pub mod pcap;
#[cfg(target_os = "linux")]
pub mod pin;
pub mod replay;

pub use capture::{Backend, BackendError, Carry, wall_clock_ns};
pub use factory::{
    BackendKind, DEFAULT_IFACE, DEFAULT_PIN_DIR, LiveOptions, OpenError, Opened, open,
};
