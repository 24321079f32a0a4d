//! The userspace link emulator (the mahimahi approach): a client network namespace joined
//! to the host by two TUN devices, with this process in between. Packets the client side
//! sends leave through its TUN device, go through the `up` link model and are injected into
//! the host's TUN device as if they arrived on a wire; replies take the `down` model back.
//!
//! ```text
//! client netns: COMMAND --- twc<id> 10.77.N.2 ==[fd]== emulator ==[fd]== tws<id> 10.77.N.1 --- servers (host)
//! ```
//!
//! The servers stay where they are (bound to the host side's address or a wildcard); the
//! probe counts on the host-side device. Set-up and teardown are this module's job: a
//! namespace named after the process (tokenwire-<pid>-<n>), devices that vanish with their
//! descriptors, and at start the namespaces of dead processes are removed.

use super::model::{Fate, LinkModel, LinkStats, Shape};
use super::netns::NetnsGuard;
use super::tun::Tun;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(
        "the link emulator needs root (network namespaces and TUN devices): run as root or use --no-shape"
    )]
    NotRoot,
    #[error("creating TUN device {name}: {source} (is /dev/net/tun there? modprobe tun)")]
    Tun {
        name: String,
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {reason}")]
    Command { cmd: String, reason: String },
    #[error("no free 10.77.N.0/24 subnet for the link")]
    NoSubnet,
}

/// What the link does, per direction, and how the client side is set up.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub up: Shape,
    pub down: Shape,
    /// Seed of both directions' loss draws (down uses seed + 1).
    pub seed: u64,
    pub mtu: u32,
    /// TCP congestion control in the client namespace (and the server one).
    pub congestion_control: String,
    /// Put the server side in a namespace of its own too (the matrix runs its own servers
    /// there, so both ends have an explicit congestion control and the host is left
    /// alone); otherwise the server side is the host.
    pub server_netns: bool,
    /// Give the link IPv6 addresses too (fd77:0:0:N::1 and ::2, beside 10.77.N.1 and .2);
    /// otherwise IPv6 is off on both sides (no router solicitations through the link).
    pub ipv6: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            up: Shape::NONE,
            down: Shape::NONE,
            seed: 1,
            mtu: 1500,
            congestion_control: "cubic".into(),
            server_netns: false,
            ipv6: false,
        }
    }
}

/// One direction's figures after a run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DirectionReport {
    #[serde(flatten)]
    pub stats: LinkStats,
    /// Packets written more than a millisecond after their due time.
    pub late: u64,
    /// The latest any packet was written after its due time, microseconds.
    pub max_late_us: u64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct EmulatorReport {
    pub up: DirectionReport,
    pub down: DirectionReport,
}

fn ip(args: &[&str]) -> Result<(), EmulatorError> {
    run("ip", args)
}

fn run(prog: &str, args: &[&str]) -> Result<(), EmulatorError> {
    let cmd = format!("{prog} {}", args.join(" "));
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| EmulatorError::Command {
            cmd: cmd.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(EmulatorError::Command {
            cmd,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Removes namespaces (and nothing else) left by emulators whose process is gone.
pub fn clean_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tokenwire-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(netns = %name, "removing a stale emulator namespace");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Namespaces other than the host's may only pick congestion controls in the host's
/// `tcp_allowed_congestion_control`; add `cc` there if it is missing (it only widens what
/// unprivileged sockets may choose; the host's default is untouched).
fn allow_congestion_control(cc: &str) -> Result<(), EmulatorError> {
    let path = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
    let allowed = std::fs::read_to_string(path).unwrap_or_default();
    if allowed.split_whitespace().any(|a| a == cc) {
        return Ok(());
    }
    let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .unwrap_or_default();
    if !available.split_whitespace().any(|a| a == cc) {
        return Err(EmulatorError::Command {
            cmd: format!("congestion control {cc}"),
            reason: format!("not available here (available: {})", available.trim()),
        });
    }
    tracing::info!(cc, "adding to net.ipv4.tcp_allowed_congestion_control");
    std::fs::write(path, format!("{} {cc}", allowed.trim())).map_err(|e| EmulatorError::Command {
        cmd: format!("allowing congestion control {cc}"),
        reason: e.to_string(),
    })
}

/// Serialises subnet choice within this process.
static SUBNETS: Mutex<()> = Mutex::new(());
static INSTANCE: AtomicU64 = AtomicU64::new(0);

fn subnet_in_use(n: u8) -> bool {
    Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" 10.77.{n}.")))
        .unwrap_or(false)
}

struct Queue {
    packets: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    ready: Condvar,
}

/// The running link; dropping it tears everything down.
pub struct Emulator {
    pub netns: String,
    /// The server side's namespace, when it has one.
    pub server_netns: Option<String>,
    pub client_if: String,
    pub server_if: String,
    /// The host side's address: where the client side reaches the servers.
    pub server_addr: Ipv4Addr,
    pub client_addr: Ipv4Addr,
    /// The IPv6 ones, with [`EmulatorConfig::ipv6`].
    pub server_addr6: Option<Ipv6Addr>,
    pub client_addr6: Option<Ipv6Addr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    reports: Arc<Mutex<EmulatorReport>>,
    models: [Arc<Mutex<LinkModel>>; 2],
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Emulator {
    pub fn start(cfg: &EmulatorConfig) -> Result<Self, EmulatorError> {
        if !is_root() {
            return Err(EmulatorError::NotRoot);
        }
        clean_stale();
        allow_congestion_control(&cfg.congestion_control)?;
        let k = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, k % 100);
        let (server_if, client_if) = (format!("tws{id}"), format!("twc{id}"));
        let netns = format!("tokenwire-{}-{k}", std::process::id());
        let tun = |name: &str| {
            Tun::create(name).map_err(|source| EmulatorError::Tun {
                name: name.to_owned(),
                source,
            })
        };
        let server_tun = tun(&server_if)?;
        let client_tun = tun(&client_if)?;
        let mut em = Self {
            netns: netns.clone(),
            server_netns: None,
            client_if: client_if.clone(),
            server_if: server_if.clone(),
            server_addr: Ipv4Addr::UNSPECIFIED,
            client_addr: Ipv4Addr::UNSPECIFIED,
            server_addr6: None,
            client_addr6: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            reports: Arc::new(Mutex::new(EmulatorReport::default())),
            models: [
                Arc::new(Mutex::new(LinkModel::new(cfg.up, cfg.seed))),
                Arc::new(Mutex::new(LinkModel::new(
                    cfg.down,
                    cfg.seed.wrapping_add(1),
                ))),
            ],
        };
        // From here on, Drop undoes what was done.
        ip(&["netns", "add", &netns])?;
        ip(&["link", "set", &client_if, "netns", &netns])?;
        let mtu = cfg.mtu.to_string();
        // Runs `ip ARGS` on the host or, with a namespace, `ip netns exec NS ARGS`.
        let in_ns = |ns: Option<&str>, args: &[&str]| match ns {
            Some(ns) => {
                let mut a = vec!["netns", "exec", ns];
                a.extend_from_slice(args);
                ip(&a)
            }
            None => run(args[0], &args[1..]),
        };
        if cfg.server_netns {
            let srv = format!("{netns}-srv");
            ip(&["netns", "add", &srv])?;
            em.server_netns = Some(srv.clone());
            ip(&["link", "set", &server_if, "netns", &srv])?;
            in_ns(Some(&srv), &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                Some(&srv),
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.tcp_congestion_control={}", cfg.congestion_control),
                ],
            )?;
        }
        let srv_ns = em.server_netns.clone();
        {
            let _guard = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
            let n = (1..=254u8)
                .find(|n| !subnet_in_use(*n))
                .ok_or(EmulatorError::NoSubnet)?;
            em.server_addr = Ipv4Addr::new(10, 77, n, 1);
            em.client_addr = Ipv4Addr::new(10, 77, n, 2);
            if cfg.ipv6 {
                em.server_addr6 = Some(Ipv6Addr::new(0xfd77, 0, 0, n.into(), 0, 0, 0, 1));
                em.client_addr6 = Some(Ipv6Addr::new(0xfd77, 0, 0, n.into(), 0, 0, 0, 2));
            }
            in_ns(
                srv_ns.as_deref(),
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", em.server_addr),
                    "dev",
                    &server_if,
                ],
            )?;
        }
        // No IPv6 chatter (router solicitations, duplicate address detection, link-local
        // addresses) through the link: IPv6 is off, or only the fixed addresses are on.
        let add_v6 = |ns: Option<&str>, dev: &str, a: Ipv6Addr| -> Result<(), EmulatorError> {
            for setting in ["accept_ra=0", "router_solicitations=0", "addr_gen_mode=1"] {
                in_ns(
                    ns,
                    &["sysctl", "-qw", &format!("net.ipv6.conf.{dev}.{setting}")],
                )?;
            }
            let addr = format!("{a}/64");
            in_ns(ns, &["ip", "-6", "addr", "add", &addr, "dev", dev, "nodad"])
        };
        match em.server_addr6 {
            None => {
                let _ = in_ns(
                    srv_ns.as_deref(),
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{server_if}.disable_ipv6=1"),
                    ],
                );
            }
            Some(a) => add_v6(srv_ns.as_deref(), &server_if, a)?,
        }
        in_ns(
            srv_ns.as_deref(),
            &["ip", "link", "set", &server_if, "mtu", &mtu, "up"],
        )?;
        let nsx = |args: &[&str]| {
            let mut a = vec!["netns", "exec", netns.as_str()];
            a.extend_from_slice(args);
            ip(&a)
        };
        if em.client_addr6.is_none() {
            nsx(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }
        nsx(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.tcp_congestion_control={}", cfg.congestion_control),
        ])?;
        nsx(&["ip", "link", "set", "lo", "up"])?;
        nsx(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", em.client_addr),
            "dev",
            &client_if,
        ])?;
        if let Some(a) = em.client_addr6 {
            add_v6(Some(&netns), &client_if, a)?;
        }
        nsx(&["ip", "link", "set", &client_if, "mtu", &mtu, "up"])?;
        nsx(&["ip", "route", "add", "default", "dev", &client_if])?;
        if em.client_addr6.is_some() {
            nsx(&["ip", "-6", "route", "add", "default", "dev", &client_if])?;
        }

        let start = Instant::now();
        let client_tun = Arc::new(client_tun);
        let server_tun = Arc::new(server_tun);
        // up: read the client side, write the server side; down: the reverse.
        for (dir, from, to) in [
            (0usize, client_tun.clone(), server_tun.clone()),
            (1, server_tun, client_tun),
        ] {
            let q = Arc::new(Queue {
                packets: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            });
            let (stop, model, q2) = (em.stop.clone(), em.models[dir].clone(), q.clone());
            em.threads.push(std::thread::spawn(move || {
                reader(&from, &model, &q2, &stop, start)
            }));
            let (stop, reports) = (em.stop.clone(), em.reports.clone());
            em.threads.push(std::thread::spawn(move || {
                writer(&to, &q, &stop, &reports, dir)
            }));
        }
        Ok(em)
    }

    /// Current counters (delivered, lost, queue drops per direction, lateness).
    pub fn report(&self) -> EmulatorReport {
        let mut r = *self.reports.lock().unwrap_or_else(|e| e.into_inner());
        r.up.stats = self.models[0]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats;
        r.down.stats = self.models[1]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats;
        r
    }

    /// A command prefix that runs something on the client side: `ip netns exec NS`.
    pub fn exec_prefix(&self) -> [String; 3] {
        ["netns".into(), "exec".into(), self.netns.clone()]
    }

    /// Runs `f` with this thread in the client namespace (sockets it creates live there).
    pub fn enter(&self) -> std::io::Result<NetnsGuard> {
        NetnsGuard::enter(&self.netns)
    }
}

fn reader(from: &Tun, model: &Mutex<LinkModel>, q: &Queue, stop: &AtomicBool, start: Instant) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.recv(&mut buf, Duration::from_millis(100)) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(dev = %from.name, error = %e, "reading the link");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = Instant::now();
        let fate = model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .arrive(now.duration_since(start), n);
        if let Fate::Deliver(at) = fate {
            let mut p = q.packets.lock().unwrap_or_else(|e| e.into_inner());
            p.push_back((start + at, buf[..n].to_vec()));
            q.ready.notify_one();
        }
    }
    q.ready.notify_all();
}

fn writer(to: &Tun, q: &Queue, stop: &AtomicBool, reports: &Mutex<EmulatorReport>, dir: usize) {
    loop {
        let (due, pkt) = {
            let mut p = q.packets.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match p.front() {
                    None => {
                        p = q
                            .ready
                            .wait_timeout(p, Duration::from_millis(100))
                            .map(|(g, _)| g)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                    Some((due, _)) => {
                        let now = Instant::now();
                        if *due <= now {
                            break;
                        }
                        // Sleep to within half a millisecond, then spin: timers on a busy
                        // machine are coarse.
                        let left = *due - now;
                        if left > Duration::from_micros(500) {
                            p = q
                                .ready
                                .wait_timeout(p, left - Duration::from_micros(500))
                                .map(|(g, _)| g)
                                .unwrap_or_else(|e| e.into_inner().0);
                        } else {
                            drop(p);
                            std::thread::yield_now();
                            p = q.packets.lock().unwrap_or_else(|e| e.into_inner());
                        }
                    }
                }
            }
            match p.pop_front() {
                Some(x) => x,
                None => continue,
            }
        };
        let late = Instant::now().saturating_duration_since(due);
        if let Err(e) = to.send(&pkt) {
            tracing::debug!(dev = %to.name, error = %e, "injecting a packet");
        }
        let mut r = reports.lock().unwrap_or_else(|e| e.into_inner());
        let d = if dir == 0 { &mut r.up } else { &mut r.down };
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        d.max_late_us = d.max_late_us.max(us);
        if late > Duration::from_millis(1) {
            d.late += 1;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The TUN devices go with their descriptors (dropped with the threads); the
        // namespaces are ours to delete.
        let _ = ip(&["netns", "del", &self.netns]);
        if let Some(srv) = &self.server_netns {
            let _ = ip(&["netns", "del", srv]);
        }
    }
}
