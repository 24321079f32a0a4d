//! `cargo xtask demo`: the probe, the model and the companions, and the bench through them.

use crate::{bin, run};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The probe as the demo runs it: eBPF when it can, else pcap; `None` (with the reason
/// printed) when neither can capture here.
pub(crate) fn start_probe() -> Option<Child> {
    let mut child = match Command::new(bin("tokenwire-probe"))
        .args(["run", "--quiet", "--backend", "auto"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "xtask: cannot start tokenwire-probe ({e}); the demo runs without wire figures"
            );
            return None;
        }
    };
    let stderr = child.stderr.take()?;
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        println!("{line}");
        if line.contains("receiving spans on") {
            // Keep its stderr flowing to ours.
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    eprintln!("{line}");
                }
            });
            return Some(child);
        }
        said.push(line);
    }
    let _ = child.wait();
    eprintln!(
        "xtask: the probe could not start ({}); the demo runs without wire figures (run it as root for eBPF or libpcap)",
        said.last().map_or("no reason given", String::as_str)
    );
    None
}

pub(crate) fn demo(prompts: usize, mean_tokens: u32, speed: f64, linger: u64) -> Result<()> {
    let mut probe = start_probe();
    let mut servers = Command::new(bin("tokenwire-servers"))
        .args(["all", "--speed", &speed.to_string(), "--grace-secs", "5"])
        .args(["--mean-tokens", &mean_tokens.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting tokenwire-servers")?;
    let result = (|| {
        let stdout = servers.stdout.take().context("servers' stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("tokenwire-servers ready") => {
                    println!("{line}");
                    break;
                }
                Some(Ok(_)) => {}
                _ => bail!("tokenwire-servers exited before it was ready (is a port in use?)"),
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("tokenwire-servers not ready after 60 s");
            }
        }
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
    for child in std::iter::once(&mut servers).chain(probe.as_mut()) {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    result
}
