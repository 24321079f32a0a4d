//! Choosing and opening a live backend from `--backend` and the platform.

use super::capture::Backend;
use super::pcap;
#[cfg(target_os = "linux")]
use super::{ebpf, ebpf_object};

/// Which live backend to use (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// eBPF where it can load and attach, else libpcap (says which, and why). On other
    /// systems than Linux: libpcap.
    Auto,
    /// A TC classifier counting in the kernel (Linux, root or CAP_BPF + CAP_NET_ADMIN).
    Ebpf,
    /// libpcap: headers copied to user space and counted there (needs CAP_NET_RAW, or
    /// read access to /dev/bpf* on macOS and the BSDs).
    Pcap,
}

/// The interface a live capture watches unless told otherwise: the loopback device.
#[cfg(any(target_os = "macos", target_os = "freebsd", target_os = "openbsd"))]
pub const DEFAULT_IFACE: &str = "lo0";
#[cfg(not(any(target_os = "macos", target_os = "freebsd", target_os = "openbsd")))]
pub const DEFAULT_IFACE: &str = "lo";

/// Where `--pin` without a directory pins (a BPF filesystem's usual mount point).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tokenwire";

/// How to open a live capture.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub ifaces: Vec<String>,
    /// eBPF: most keys the kernel map holds.
    pub max_flows: u32,
    /// eBPF: turn on the kernel's BPF run-time statistics while running.
    pub bpf_stats: bool,
    /// TCP server ports read passively (marked in the kernel before attaching).
    pub http_ports: std::collections::BTreeSet<u16>,
    /// eBPF: bytes of the ring of rare flow events (first packet, first payload, close).
    pub event_ring_bytes: u32,
    /// eBPF: bytes of the ring passively read packets go through.
    pub passive_ring_bytes: u32,
    /// eBPF: pin maps and links in this bpffs directory, adopting a previous probe's.
    pub pin: Option<std::path::PathBuf>,
    pub pcap: pcap::PcapOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Ebpf(#[from] ebpf_object::EbpfError),
    #[error(transparent)]
    Pcap(#[from] pcap::PcapBackendError),
    #[error("the eBPF backend needs Linux; use --backend pcap")]
    EbpfNeedsLinux,
    #[error(
        "this tokenwire-probe was built without libpcap (the static build): use --backend ebpf"
    )]
    PcapNotBuilt,
    /// `auto`: neither backend could start; both reasons.
    #[error("eBPF unavailable ({ebpf}); falling back to the pcap backend failed too: {pcap}")]
    Neither { ebpf: String, pcap: Box<OpenError> },
}

/// A live backend, and what the user should hear about the choice (a fallback).
pub struct Opened {
    pub backend: Box<dyn Backend>,
    pub notice: Option<String>,
}

/// Opens the live backend `kind` asks for on this platform.
pub fn open(kind: BackendKind, opts: &LiveOptions) -> Result<Opened, OpenError> {
    let pcap = || -> Result<Box<dyn Backend>, OpenError> {
        #[cfg(feature = "pcap")]
        return Ok(Box::new(pcap::PcapBackend::start(
            &opts.ifaces,
            &opts.pcap,
        )?));
        #[cfg(not(feature = "pcap"))]
        Err(OpenError::PcapNotBuilt)
    };
    match kind {
        BackendKind::Pcap => Ok(Opened {
            backend: pcap()?,
            notice: None,
        }),
        BackendKind::Ebpf => open_ebpf(opts).map(|backend| Opened {
            backend,
            notice: None,
        }),
        BackendKind::Auto => auto(opts, pcap),
    }
}

#[cfg(target_os = "linux")]
fn open_ebpf(opts: &LiveOptions) -> Result<Box<dyn Backend>, OpenError> {
    Ok(Box::new(ebpf::EbpfBackend::start_with(
        &opts.ifaces,
        opts.max_flows,
        opts.bpf_stats,
        &ebpf::EbpfOptions {
            http_ports: opts.http_ports.clone(),
            rings: ebpf_object::RingSizes {
                events: opts.event_ring_bytes,
                passive: opts.passive_ring_bytes,
            },
            pin: opts.pin.clone(),
        },
    )?))
}

#[cfg(not(target_os = "linux"))]
fn open_ebpf(_opts: &LiveOptions) -> Result<Box<dyn Backend>, OpenError> {
    Err(OpenError::EbpfNeedsLinux)
}

#[cfg(target_os = "linux")]
fn auto(
    opts: &LiveOptions,
    pcap: impl FnOnce() -> Result<Box<dyn Backend>, OpenError>,
) -> Result<Opened, OpenError> {
    match open_ebpf(opts) {
        Ok(backend) => Ok(Opened {
            backend,
            notice: None,
        }),
        Err(
            e @ OpenError::Ebpf(
                ebpf_object::EbpfError::NoInterface(_) | ebpf_object::EbpfError::Pin { .. },
            ),
        ) => Err(e),
        Err(e) => match pcap() {
            Ok(backend) => Ok(Opened {
                backend,
                notice: Some(format!(
                    "eBPF unavailable ({e}); falling back to the pcap backend"
                )),
            }),
            Err(p) => Err(OpenError::Neither {
                ebpf: e.to_string(),
                pcap: Box::new(p),
            }),
        },
    }
}

#[cfg(not(target_os = "linux"))]
fn auto(
    _opts: &LiveOptions,
    pcap: impl FnOnce() -> Result<Box<dyn Backend>, OpenError>,
) -> Result<Opened, OpenError> {
    Ok(Opened {
        backend: pcap()?,
        notice: Some("eBPF needs Linux; using the pcap backend".into()),
    })
}
