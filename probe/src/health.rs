//! The capture's own health figures: what it could not attribute or lost, and what it
//! costs. Every backend reports one; nothing here knows which backend.

use crate::flow::Counters;

/// The backend's own health figures.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Health {
    /// Packets that were not IP (ARP, ...).
    pub not_ip: Counters,
    /// Packets too short or with bad header lengths: counted, not keyed.
    pub malformed: Counters,
    /// Packets counted outside their flow because the flow map was full.
    pub map_full: Counters,
    /// Events lost because the ring buffer was full.
    pub event_drops: u64,
    /// First-payload copies that failed.
    pub payload_copy_failures: u64,
    /// Passively read packets lost because their ring was full (eBPF).
    pub passive_drops: u64,
    /// Passively read packets whose payload could not be copied (eBPF).
    pub passive_copy_failures: u64,
    /// Keys currently held (in the kernel map, for eBPF).
    pub flows_tracked: u64,
    /// Packets the kernel dropped before libpcap read them (pcap backend).
    pub kernel_drops: u64,
    /// Runs of the probe's programs and their total time, from the kernel's BPF run-time
    /// statistics (zero unless kernel.bpf_stats_enabled is on, e.g. with `--bpf-stats`).
    pub bpf_run_count: u64,
    pub bpf_run_time_ns: u64,
}

impl Health {
    /// Mean kernel time per packet, when the kernel keeps BPF statistics.
    pub fn ns_per_packet(&self) -> Option<f64> {
        (self.bpf_run_count > 0).then(|| self.bpf_run_time_ns as f64 / self.bpf_run_count as f64)
    }

    /// Packets counted outside any flow, by the `reason` label they are exported with.
    pub fn unattributed(&self) -> [(&'static str, Counters); 3] {
        [
            ("not_ip", self.not_ip),
            ("malformed", self.malformed),
            ("map_full", self.map_full),
        ]
    }
}
