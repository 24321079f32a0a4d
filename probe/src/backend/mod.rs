//! Capture backends. Each one feeds the platform-free [`crate::table::FlowTable`] with
//! cumulative per-key counters and rare events; the eBPF backend counts in the kernel.

#[cfg(target_os = "linux")]
pub mod ebpf;

/// The backend's own health figures.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Health {
    /// Packets that were not IP (ARP, ...).
    pub not_ip: crate::flow::Counters,
    /// Packets too short or with bad header lengths: counted, not keyed.
    pub malformed: crate::flow::Counters,
    /// Packets counted outside their flow because the flow map was full.
    pub map_full: crate::flow::Counters,
    /// Events lost because the ring buffer was full.
    pub event_drops: u64,
    /// First-payload copies that failed.
    pub payload_copy_failures: u64,
    /// Keys currently in the kernel map.
    pub flows_tracked: u64,
}
