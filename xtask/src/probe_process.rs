//! A release-build `tokenwire-probe run` on lo for the measuring tasks: started with its
//! spans socket in a directory of its own and its API on an ephemeral port, read through
//! its /metrics, and stopped (SIGINT) when dropped.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Probe {
    child: Child,
    api: SocketAddr,
    dir: PathBuf,
}

impl Probe {
    /// Starts the probe with `backend` (`ebpf` or `pcap`) and `extra` arguments, and
    /// returns once it receives spans.
    pub fn start(backend: &str, extra: &[&str]) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("tokenwire-xtask-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new("target/release/tokenwire-probe")
            .args(["run", "--iface", "lo", "--backend", backend, "--quiet"])
            .args(["--interval", "3600", "--listen", "127.0.0.1:0", "--spans"])
            .arg(dir.join("spans.sock"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting target/release/tokenwire-probe")?;
        let stderr = child.stderr.take().context("the probe's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut api = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.split("serving http://").nth(1) {
                api = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if line.contains("receiving spans on") {
                break;
            }
        }
        // Keep draining; warnings (rejected spans, a full map) are worth seeing.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("  probe: {line}");
                }
            }
        });
        let api = api.context("the probe did not say where it serves")?;
        Ok(Self { child, api, dir })
    }

    /// The socket servers send their spans to.
    pub fn spans_socket(&self) -> PathBuf {
        self.dir.join("spans.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its Prometheus exposition now.
    pub fn metrics(&self) -> Result<String> {
        crate::observe::metrics(self.api).context("reading the probe's /metrics")
    }

    /// (accepted, rejected by reason) from /metrics.
    pub fn span_counts(&self) -> Result<(u64, Vec<(String, u64)>)> {
        Ok(span_counts(&self.metrics()?))
    }

    /// Resident and peak resident set size, KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let pid = self.child.id();
        (
            crate::observe::status_kib(pid, "VmRSS:"),
            crate::observe::status_kib(pid, "VmHWM:"),
        )
    }
}

/// (accepted, rejected by reason) in a probe's exposition `text`.
pub fn span_counts(text: &str) -> (u64, Vec<(String, u64)>) {
    let accepted = crate::observe::sample(text, "tokenwire_probe_spans_accepted_total ");
    let rejected = text
        .lines()
        .filter_map(|l| l.strip_prefix("tokenwire_probe_spans_rejected_total{reason=\""))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once('"')?;
            let n = value.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some((reason.to_owned(), n))
        })
        .collect();
    (accepted, rejected)
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
