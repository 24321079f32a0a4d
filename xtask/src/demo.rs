//! `cargo xtask demo`: the probe, the model and the companions, and the bench through them.

use crate::{bin, run};
use anyhow::Result;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokenwire_probe_common::launch::{ProbeLaunch, RunningProbe, ServersLaunch};

/// The probe as the demo runs it: eBPF when it can, else pcap; `None` (with the reason
/// printed) when neither can capture here. Its log goes to stderr.
fn start_probe() -> Option<RunningProbe> {
    let mut cmd = Command::new(bin("tokenwire-probe"));
    cmd.args(["run", "--quiet", "--backend", "auto"])
        .stdout(Stdio::null());
    match ProbeLaunch::new(cmd).echo(true).start() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!(
                "xtask: {e}; the demo runs without wire figures (run it as root for eBPF or libpcap)"
            );
            None
        }
    }
}

pub(crate) fn demo(prompts: usize, mean_tokens: u32, speed: f64, linger: u64) -> Result<()> {
    let mut probe = start_probe();
    let mut cmd = Command::new(bin("tokenwire-servers"));
    cmd.args(["all", "--speed", &speed.to_string(), "--grace-secs", "5"])
        .args(["--mean-tokens", &mean_tokens.to_string()])
        .stdout(Stdio::inherit())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let mut servers = match ServersLaunch::new(cmd).echo(true).start() {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = probe.as_mut() {
                p.stop("INT");
            }
            return Err(anyhow::anyhow!("{e} (is a port in use?)"));
        }
    };
    let result = (|| {
        let mut bench = Command::new(bin("tokenwire-bench"));
        bench.args(["run", "--reuse", "--limit", &prompts.to_string()]);
        if probe.is_none() {
            bench.arg("--no-probe");
        }
        run(&mut bench)?;
        if probe.is_some() && linger > 0 {
            println!(
                "\nThe probe's exporter stays up for {linger} s (Ctrl-C to stop now): \
                 http://127.0.0.1:9464/metrics, /api/requests, /api/connections, /api/flows\n\
                 Prometheus: prometheus --config.file=grafana/prometheus.yml --storage.tsdb.path=/tmp/tokenwire-prometheus\n\
                 Grafana:    TOKENWIRE_DIR=$PWD grafana-server --homepath /usr/share/grafana \
                 cfg:default.paths.provisioning=$PWD/grafana/provisioning\n\
                 (the dashboard 'tokenwire: bytes per token' is provisioned; docs/metrics.md has the queries)"
            );
            // Ctrl-C reaches the whole process group: the probe and the servers stop
            // themselves cleanly, and so does this wait.
            std::thread::sleep(Duration::from_secs(linger));
        }
        Ok(())
    })();
    // SIGINT: the servers finish in-flight streams and exit; the probe prints its table.
    servers.stop("INT");
    if let Some(p) = probe.as_mut() {
        p.stop("INT");
    }
    result
}
