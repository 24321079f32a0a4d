//! Starting `tokenwire-probe run` or `tokenwire-servers` from another program (the tests,
//! xtask's tasks, the bench's matrix) and knowing when it is ready. Each writes its
//! `--ready-file` once ready (the probe: attached, serving and receiving spans; the
//! servers: every one listening); this waits for that file (and for nothing they log), and
//! says why when the process exits first.
//!
//! Needs std and serde_json: the `launch` feature.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::vec::Vec;
use std::{eprintln, format};

/// What the probe's ready file says.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeReady {
    pub pid: u32,
    /// `ebpf` or `pcap`.
    pub backend: String,
    pub interfaces: Vec<String>,
    /// Where it serves /metrics and the API (`None` with `--no-listen`).
    pub api: Option<SocketAddr>,
    /// Its spans socket (`None` with `--no-spans`).
    pub spans: Option<PathBuf>,
}

/// What the servers' ready file says.
#[derive(Debug, Clone, Deserialize)]
pub struct ServersReady {
    pub pid: u32,
    /// Each server's name (`model`, or the approach's) to its URL.
    pub servers: BTreeMap<String, String>,
}

/// Why a process did not become ready.
#[derive(Debug)]
pub struct LaunchError(pub String);

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LaunchError {}

/// A process to start: its command, then [`Launch::start`]; `T` is what its ready file
/// says.
pub struct Launch<T> {
    command: Command,
    timeout: Duration,
    echo: bool,
    log: Option<PathBuf>,
    what: &'static str,
    ready: PhantomData<T>,
}

/// A started process, ready.
pub struct Started<T> {
    pub child: Child,
    pub ready: T,
    ready_file: PathBuf,
}

/// `tokenwire-probe run`.
pub type ProbeLaunch = Launch<ProbeReady>;
pub type RunningProbe = Started<ProbeReady>;
/// `tokenwire-servers`.
pub type ServersLaunch = Launch<ServersReady>;
pub type RunningServers = Started<ServersReady>;

/// The last lines the probe logged, for the error when it exits early.
const TAIL: usize = 20;

impl ProbeLaunch {
    /// `command` runs the probe's `run` with its arguments: the binary itself, or inside
    /// a namespace (`ip netns exec NS BIN run ...`). `--ready-file` is added here; its
    /// stdout is the caller's to set.
    pub fn new(command: Command) -> Self {
        Launch::of(command, "the probe")
    }
}

impl ServersLaunch {
    /// `command` runs `tokenwire-servers` with a subcommand and its arguments.
    pub fn new(command: Command) -> Self {
        Launch::of(command, "tokenwire-servers")
    }
}

impl<T: DeserializeOwned> Launch<T> {
    fn of(command: Command, what: &'static str) -> Self {
        Self {
            command,
            timeout: Duration::from_secs(60),
            echo: false,
            log: None,
            what,
            ready: PhantomData,
        }
    }

    /// How long it may take to become ready (60 s by default: the verifier takes ~2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Copies its log to this process's stderr (else only its last lines are kept, for
    /// the error if it exits before it is ready).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Appends its whole log to `path` (created if missing), for reading after it ends.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Starts it and waits until it is ready.
    pub fn start(mut self) -> Result<Started<T>, LaunchError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let ready_file = std::env::temp_dir().join(format!(
            "tokenwire-ready-{}-{}.json",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready_file);
        let mut child = self
            .command
            .arg("--ready-file")
            .arg(&ready_file)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LaunchError(format!("starting {}: {e}", self.what)))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let (tail, echo) = (tail.clone(), self.echo);
            let mut log = self.log.as_ref().and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
            });
            // Drained to its end, so the probe never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("{line}");
                    }
                    if let Some(f) = log.as_mut() {
                        use std::io::Write;
                        let _ = writeln!(f, "{line}");
                    }
                    let mut t = tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if t.len() == TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let said = || {
            let t = tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.iter().cloned().collect::<Vec<_>>().join("; ")
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                let ready: T = serde_json::from_str(&text).map_err(|e| {
                    LaunchError(format!(
                        "{}'s ready file {}: {e}",
                        self.what,
                        ready_file.display()
                    ))
                })?;
                return Ok(Started {
                    child,
                    ready,
                    ready_file,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Its last words arrive with the pipe's end.
                std::thread::sleep(Duration::from_millis(100));
                return Err(LaunchError(format!(
                    "{} exited ({status}) before it was ready: {}",
                    self.what,
                    said()
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError(format!(
                    "{} was not ready after {:?}: {}",
                    self.what,
                    self.timeout,
                    said()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RunningProbe {
    /// Where it serves its API; panics if it was started with `--no-listen`.
    pub fn api(&self) -> SocketAddr {
        self.ready
            .api
            .expect("the probe serves no API (--no-listen)")
    }
}

impl<T> Started<T> {
    /// Sends it `signal` (`TERM`, `INT`, `KILL`) and waits for it to exit.
    pub fn stop(&mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl<T> Drop for Started<T> {
    /// Removes the ready file; stopping the process is the caller's ([`Started::stop`]).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ready_file);
    }
}
