//! The libpcap backend: live capture where eBPF cannot run (macOS, no BPF privileges).
//! One thread per interface reads packets (headers only: a short snap length) and counts
//! them in user space with the same rules as the kernel side; kernel drops are read from
//! libpcap's statistics and reported, never hidden. Built with the `pcap` feature (on by
//! default); without it (the static build, which has no libpcap) the probe is eBPF only
//! and `--backend pcap` says so.

#[cfg(feature = "pcap")]
use super::accumulate::Accumulator;
#[cfg(feature = "pcap")]
use super::capture::{Backend, BackendError, wall_clock_ns};
#[cfg(feature = "pcap")]
use crate::flow::PacketKey;
#[cfg(feature = "pcap")]
use crate::health::Health;
#[cfg(feature = "pcap")]
use crate::packet::LinkType;
#[cfg(feature = "pcap")]
use crate::passive::Passive;
#[cfg(feature = "pcap")]
use crate::spans::Span;
#[cfg(feature = "pcap")]
use crate::table::FlowTable;
#[cfg(feature = "pcap")]
use std::collections::BTreeSet;
#[cfg(feature = "pcap")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "pcap")]
use std::sync::{Arc, Mutex};
#[cfg(feature = "pcap")]
use std::thread::JoinHandle;
#[cfg(feature = "pcap")]
use std::time::Instant;

/// Enough for Ethernet + VLAN + IPv6 with extension headers + TCP options + the first
/// payload bytes the classifier reads (a TLS ClientHello's SNI and ALPN).
pub const DEFAULT_SNAPLEN: i32 = 600;

/// What a capture that was refused needs, on this platform.
#[cfg(all(feature = "pcap", target_os = "linux"))]
const PERMISSION_HINT: &str = ": capturing needs CAP_NET_RAW (or root)";
/// libpcap opens /dev/bpf*, root-only unless Wireshark's ChmodBPF (macOS) or devfs rules
/// (FreeBSD) open it to a group.
#[cfg(all(feature = "pcap", not(target_os = "linux")))]
const PERMISSION_HINT: &str = ": capturing needs read access to /dev/bpf*: run with sudo, or install Wireshark's ChmodBPF (macOS) and join the access_bpf group";

#[derive(Debug, thiserror::Error)]
pub enum PcapBackendError {
    #[error("opening {iface} with libpcap: {reason}")]
    Open { iface: String, reason: String },
    #[error(
        "{iface}: link type {linktype} is not one tokenwire reads (Ethernet, null, loop, raw, Linux cooked v1/v2)"
    )]
    LinkType { iface: String, linktype: i32 },
    #[error("capture filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct PcapOptions {
    pub snaplen: i32,
    /// Kernel buffer, bytes.
    pub buffer_size: i32,
    /// A BPF capture filter, e.g. "port 8080 or port 4433".
    pub filter: Option<String>,
    /// Most flow keys held (`--max-flows`, as for the kernel map).
    pub max_flows: u32,
}

impl Default for PcapOptions {
    fn default() -> Self {
        Self {
            snaplen: DEFAULT_SNAPLEN,
            buffer_size: 8 << 20,
            filter: None,
            max_flows: 65_536,
        }
    }
}

#[cfg(feature = "pcap")]
struct Shared {
    acc: Accumulator,
    /// Kernel drops per interface (libpcap's ps_drop + ps_ifdrop).
    drops: Vec<u64>,
    /// Drops already reported to passive reading.
    drops_seen: u64,
    error: Option<String>,
}

#[cfg(feature = "pcap")]
pub struct PcapBackend {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Wakes a capture thread blocked in libpcap (pcap_breakloop).
    breakers: Vec<pcap::BreakLoop>,
    threads: Vec<JoinHandle<()>>,
    pub ifaces: Vec<(u32, String)>,
}

#[cfg(feature = "pcap")]
fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(feature = "pcap")]
impl PcapBackend {
    pub fn start(ifaces: &[String], opts: &PcapOptions) -> Result<Self, PcapBackendError> {
        let shared = Arc::new(Mutex::new(Shared {
            acc: Accumulator::with_max_keys(opts.max_flows as usize),
            drops: vec![0; ifaces.len()],
            drops_seen: 0,
            error: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut breakers = Vec::new();
        let mut names = Vec::new();
        for (i, name) in ifaces.iter().enumerate() {
            let open_err = |e: pcap::Error| {
                let mut reason = e.to_string();
                if reason.contains("not permitted") || reason.contains("ermission denied") {
                    reason.push_str(PERMISSION_HINT);
                }
                PcapBackendError::Open {
                    iface: name.clone(),
                    reason,
                }
            };
            let mut cap = pcap::Capture::from_device(name.as_str())
                .map_err(open_err)?
                .snaplen(opts.snaplen)
                .buffer_size(opts.buffer_size)
                .immediate_mode(true)
                .timeout(100)
                .open()
                .map_err(open_err)?;
            if let Some(f) = &opts.filter {
                cap.filter(f, true).map_err(|e| PcapBackendError::Filter {
                    filter: f.clone(),
                    reason: e.to_string(),
                })?;
            }
            let linktype = cap.get_datalink().0;
            let link = u32::try_from(linktype)
                .ok()
                .and_then(LinkType::from_pcap)
                .ok_or(PcapBackendError::LinkType {
                    iface: name.clone(),
                    linktype,
                })?;
            // Interfaces are numbered by position: pcap has no ifindex on every platform.
            let index = i as u32 + 1;
            names.push((index, name.clone()));
            breakers.push(cap.breakloop_handle());
            let (shared, stop) = (shared.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                capture_loop(cap, link, index, i, &shared, &stop)
            }));
        }
        Ok(Self {
            shared,
            stop,
            breakers,
            threads,
            ifaces: names,
        })
    }
}

#[cfg(feature = "pcap")]
impl Backend for PcapBackend {
    fn name(&self) -> &'static str {
        "pcap"
    }

    fn interfaces(&self) -> Vec<(u32, String)> {
        self.ifaces.clone()
    }

    /// Hands what the capture threads counted to the table; returns the keys held.
    fn poll(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64, BackendError> {
        let mut s = lock(&self.shared);
        if let Some(e) = &s.error {
            return Err(BackendError(e.clone()));
        }
        s.acc.flush(table, now);
        Ok(s.acc.health.flows_tracked)
    }

    fn cut_time_ns(&self, _span: &Span) -> u64 {
        wall_clock_ns()
    }

    /// Counted in user space: hands over everything counted so far.
    fn refresh(&mut self, table: &mut FlowTable, _keys: &[PacketKey], now: Instant) {
        lock(&self.shared).acc.flush(table, now);
    }

    fn evict(&mut self, table: &mut FlowTable, keys: &[PacketKey]) {
        lock(&self.shared).acc.evict(table, keys);
    }

    fn health(&self) -> Health {
        let s = lock(&self.shared);
        Health {
            kernel_drops: s.drops.iter().sum(),
            ..s.acc.health
        }
    }

    fn read_passive(&mut self, ports: &BTreeSet<u16>) -> Result<(), BackendError> {
        lock(&self.shared).acc.read_passive(ports.clone());
        Ok(())
    }

    fn drain_passive(&mut self, sink: &mut Passive) {
        let mut s = lock(&self.shared);
        // libpcap's own drops may have been packets of the ports read.
        let drops: u64 = s.drops.iter().sum();
        if drops > s.drops_seen {
            s.drops_seen = drops;
            sink.capture_lost();
        }
        s.acc.drain_passive(sink);
    }
}

#[cfg(feature = "pcap")]
fn capture_loop(
    mut cap: pcap::Capture<pcap::Active>,
    link: LinkType,
    ifindex: u32,
    slot: usize,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
) {
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match cap.next_packet() {
            Ok(p) => {
                let ts = &p.header.ts;
                let time_ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                    + u64::try_from(ts.tv_usec).unwrap_or(0) * 1_000;
                lock(shared)
                    .acc
                    .packet(link, p.data, p.header.len, ifindex, time_ns)
            }
            Err(pcap::Error::TimeoutExpired) => {}
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => {
                lock(shared).error = Some(e.to_string());
                return;
            }
        }
        if last_stats.elapsed().as_millis() >= 500 {
            last_stats = Instant::now();
            if let Ok(st) = cap.stats() {
                lock(shared).drops[slot] = u64::from(st.dropped) + u64::from(st.if_dropped);
            }
        }
    }
    if let Ok(st) = cap.stats() {
        lock(shared).drops[slot] = u64::from(st.dropped) + u64::from(st.if_dropped);
    }
}

#[cfg(feature = "pcap")]
impl Drop for PcapBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for b in &self.breakers {
            b.breakloop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
