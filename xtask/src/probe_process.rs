//! A release-build `tokenwire-probe run` on lo for the measuring tasks: started with its
//! spans socket in a directory of its own and its API on an ephemeral port, read through
//! its /metrics, and stopped (SIGINT) when dropped.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tokenwire_probe_common::launch::{ProbeLaunch, RunningProbe};

pub struct Probe {
    running: RunningProbe,
    api: SocketAddr,
    dir: PathBuf,
}

impl Probe {
    /// Starts the probe with `backend` (`ebpf` or `pcap`) and `extra` arguments, and
    /// returns once it is ready (its ready file: the one launcher, probe-common's).
    pub fn start(backend: &str, extra: &[&str]) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("tokenwire-xtask-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(crate::release_bin("tokenwire-probe"));
        cmd.args(["run", "--iface", "lo", "--backend", backend, "--quiet"])
            .args(["--interval", "3600", "--listen", "127.0.0.1:0", "--spans"])
            .arg(dir.join("spans.sock"))
            .args(extra)
            .stdout(Stdio::null());
        let running = ProbeLaunch::new(cmd)
            .start()
            .context("starting the release tokenwire-probe")?;
        Ok(Self {
            api: running.api(),
            running,
            dir,
        })
    }

    /// The socket servers send their spans to.
    pub fn spans_socket(&self) -> PathBuf {
        self.dir.join("spans.sock")
    }

    pub fn pid(&self) -> u32 {
        self.running.child.id()
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
        let pid = self.running.child.id();
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
        self.running.stop("INT");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
