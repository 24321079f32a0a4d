//! Network profiles and the packet-level link emulator that applies them (docs/emulator.md).
//! The model is platform-free; the emulator (TUN devices between network namespaces) is
//! Linux-only.

#[cfg(target_os = "linux")]
pub mod emulator;
pub mod model;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod profile;
#[cfg(target_os = "linux")]
pub mod tun;
