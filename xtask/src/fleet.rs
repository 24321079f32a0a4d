//! `cargo xtask fleet --nodes N`: a fleet on this machine. Each node is a network
//! namespace with its own loopback, running the companions on the embedded model, a
//! probe, and a Prometheus that scrapes that probe with the node's name as an external
//! label; a central Prometheus federates every node's. Bench traffic runs on every node
//! at once; the task then asks the central Prometheus for bytes and packets per token by
//! node and approach and checks them against each node's own figures (its probe's
//! `/api/requests` records and `/metrics` counters). Loopback and 10.79.N.0/24 addresses
//! only; every process, namespace and file goes at the end, whatever happened.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the central Prometheus listens (root namespace, loopback).
const CENTRAL: &str = "127.0.0.1:19090";
const PROBE_PORT: u16 = 9464;
const NODE_PROMETHEUS_PORT: u16 = 9090;

fn node_name(n: u32) -> String {
    format!("node-{n}")
}

fn netns(n: u32) -> String {
    format!("twfleet{n}")
}

/// The node's address on its link to the root namespace.
fn node_addr(n: u32) -> String {
    format!("10.79.{n}.2")
}

/// What the fleet started, torn down on drop.
struct Fleet {
    children: Vec<(String, Child)>,
    namespaces: Vec<String>,
    dir: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGINT first: the servers finish their streams, the probes and Prometheus exit.
        for (_, c) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .context("running ip (iproute2)")?;
    if !st.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

/// `program` run inside network namespace `ns`.
fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

impl Fleet {
    fn spawn(&mut self, what: String, cmd: &mut Command) -> Result<()> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.children.push((what, child));
        Ok(())
    }

    /// A node: its namespace and link, then its probe, companions and Prometheus.
    fn node(&mut self, n: u32) -> Result<()> {
        let ns = netns(n);
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let host_if = format!("twfl{n}");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("10.79.{n}.1/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", node_addr(n)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;

        let dir = self.dir.join(node_name(n));
        std::fs::create_dir_all(&dir)?;
        let spans = dir.join("spans.sock");
        let log = |name: &str| std::fs::File::create(dir.join(name)).map(Stdio::from);
        let mut probe = in_ns(&ns, crate::bin("tokenwire-probe"));
        probe
            .args(["run", "--iface", "lo", "--quiet", "--interval", "3600"])
            .args(["--listen", &format!("0.0.0.0:{PROBE_PORT}")])
            .arg("--spans")
            .arg(&spans)
            .stdout(Stdio::null())
            .stderr(log("probe.log")?);
        self.spawn(format!("{}'s probe", node_name(n)), &mut probe)?;
        wait_http(
            &format!("http://{}:{PROBE_PORT}/metrics", node_addr(n)),
            "the probe",
        )?;

        let mut servers = in_ns(&ns, crate::bin("tokenwire-servers"));
        servers
            .args([
                "all",
                "--speed",
                "4",
                "--mean-tokens",
                "60",
                "--grace-secs",
                "2",
            ])
            .arg("--spans")
            .arg(&spans)
            .stdout(Stdio::null())
            .stderr(log("servers.log")?)
            .env("RUST_LOG", "warn");
        let ready = dir.join("servers.ready");
        servers.arg("--ready-file").arg(&ready);
        self.spawn(format!("{}'s servers", node_name(n)), &mut servers)?;
        // Ready once their ready file is there (written whole, when every server listens).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{}'s servers were not ready within 60 s (servers.log in {})",
                    node_name(n),
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  external_labels:\n    node: {}\n\
                 scrape_configs:\n  - job_name: tokenwire-probe\n    static_configs:\n      - targets: ['127.0.0.1:{PROBE_PORT}']\n",
                node_name(n)
            ),
        )?;
        let mut prom = prometheus(
            in_ns(&ns, "prometheus"),
            &config,
            &dir.join("tsdb"),
            &format!("0.0.0.0:{NODE_PROMETHEUS_PORT}"),
        );
        self.spawn(format!("{}'s Prometheus", node_name(n)), &mut prom)?;
        wait_http(
            &format!("http://{}:{NODE_PROMETHEUS_PORT}/-/ready", node_addr(n)),
            "the node's Prometheus",
        )
    }

    /// The central Prometheus, federating every node's.
    fn central(&mut self, nodes: u32) -> Result<()> {
        let targets: Vec<String> = (1..=nodes)
            .map(|n| format!("'{}:{NODE_PROMETHEUS_PORT}'", node_addr(n)))
            .collect();
        let config = self.dir.join("central.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n\
                 scrape_configs:\n  - job_name: federate\n    honor_labels: true\n    metrics_path: /federate\n    params:\n      'match[]': ['{{__name__=~\"tokenwire_.*\"}}']\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let mut prom = prometheus(
            Command::new("prometheus"),
            &config,
            &self.dir.join("central-tsdb"),
            CENTRAL,
        );
        self.spawn("the central Prometheus".into(), &mut prom)?;
        wait_http(
            &format!("http://{CENTRAL}/-/ready"),
            "the central Prometheus",
        )
    }
}

/// `c` (prometheus, perhaps inside a namespace) with its configuration, storage and
/// address.
fn prometheus(mut c: Command, config: &Path, tsdb: &Path, listen: &str) -> Command {
    c.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_http(url: &str, what: &str) -> Result<()> {
    let started = Instant::now();
    while curl(&[url]).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not answer {url} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// An instant PromQL query on the central Prometheus: (node, approach) -> value.
fn query(expr: &str) -> Result<BTreeMap<(String, String), f64>> {
    let body = curl(&[
        &format!("http://{CENTRAL}/api/v1/query"),
        "--data-urlencode",
        &format!("query={expr}"),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&body).context("Prometheus's answer")?;
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let label = |l: &str| r["metric"][l].as_str().unwrap_or("").to_owned();
        let value: f64 = r["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        out.insert((label("node"), label("approach")), value);
    }
    Ok(out)
}

/// What a node's probe says itself, per approach: (bytes charged to requests, tokens,
/// requests) from /api/requests, and wire packets from /metrics.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Own {
    bytes: u64,
    tokens: u64,
    requests: u64,
    packets: u64,
}

fn own_figures(n: u32) -> Result<(BTreeMap<String, Own>, bool)> {
    let base = format!("http://{}:{PROBE_PORT}", node_addr(n));
    let records: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{base}/api/requests")])?)
            .context("the probe's /api/requests")?;
    let mut out: BTreeMap<String, Own> = BTreeMap::new();
    let mut all_final = true;
    let list = records["requests"].as_array().cloned().unwrap_or_default();
    // The span-fed approaches: a node's passive records (its model's own port, read from
    // the packets) are labelled by endpoint family, which the wire series are not.
    for r in list.iter().filter(|r| r["source"] != "passive") {
        all_final &= r["final"] == true;
        let o = out
            .entry(r["approach"].as_str().unwrap_or("?").to_owned())
            .or_default();
        o.bytes += r["wire_bytes"].as_u64().unwrap_or(0);
        o.tokens += r["tokens"].as_u64().unwrap_or(0);
        o.requests += 1;
    }
    let metrics = curl(&[&format!("{base}/metrics")])?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("tokenwire_wire_packets_total{"))
    {
        let Some(a) = line
            .split("approach=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        if let Some(o) = out.get_mut(a) {
            o.packets += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
    }
    Ok((out, all_final && !list.is_empty()))
}

pub fn run(nodes: u32) -> Result<()> {
    if !(1..=20).contains(&nodes) {
        bail!("--nodes must be between 1 and 20");
    }
    crate::setup::apt_install(&["prometheus", "curl", "iproute2"])?;
    let mut fleet = Fleet {
        dir: std::env::temp_dir().join(format!("tokenwire-fleet-{}", std::process::id())),
        children: Vec::new(),
        namespaces: Vec::new(),
    };
    std::fs::create_dir_all(&fleet.dir)?;
    for n in 1..=nodes {
        eprintln!(
            "xtask: starting {} (namespace {}, {})",
            node_name(n),
            netns(n),
            node_addr(n)
        );
        fleet.node(n)?;
    }
    fleet.central(nodes)?;

    // Traffic on every node at once; node N runs N + 1 prompts per approach.
    eprintln!("xtask: bench traffic on {nodes} nodes");
    let mut benches = Vec::new();
    for n in 1..=nodes {
        let out = fleet.dir.join(node_name(n)).join("bench.txt");
        let file = std::fs::File::create(&out)?;
        let child = in_ns(&netns(n), crate::bin("tokenwire-bench"))
            .args(["run", "--reuse", "--limit", &(n + 1).to_string()])
            .args(["--probe", &format!("127.0.0.1:{PROBE_PORT}")])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("starting tokenwire-bench")?;
        benches.push((n, child, out));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for (n, mut child, out) in benches {
        let st = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{}'s bench did not finish within 5 minutes", node_name(n));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if !st.success() {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            bail!("{}'s bench failed:\n{text}", node_name(n));
        }
    }

    // Each node's own figures once every record is final (the bench's connections
    // closed), and the central view once it has caught up with them (a node scrape and a
    // federation scrape later); both read again until they agree or 30 s pass.
    let bytes_q = "sum by (node, approach) (tokenwire_request_wire_bytes_sum)";
    let tokens_q = "sum by (node, approach) (tokenwire_tokens_total)";
    let packets_q = "sum by (node, approach) (tokenwire_wire_packets_total)";
    let requests_q = "sum by (node, approach) (tokenwire_request_wire_bytes_count)";
    let started = Instant::now();
    let (own, (bytes, tokens, packets, requests)) = loop {
        let mut own = BTreeMap::new();
        let mut all_final = true;
        for n in 1..=nodes {
            let (figures, done) = own_figures(n)?;
            all_final &= done;
            own.insert(node_name(n), figures);
        }
        let got = (
            query(bytes_q)?,
            query(tokens_q)?,
            query(packets_q)?,
            query(requests_q)?,
        );
        let agrees = own.iter().all(|(node, by)| {
            by.iter().all(|(a, o)| {
                let k = (node.clone(), a.clone());
                got.0.get(&k) == Some(&(o.bytes as f64))
                    && got.1.get(&k) == Some(&(o.tokens as f64))
                    && got.2.get(&k) == Some(&(o.packets as f64))
                    && got.3.get(&k) == Some(&(o.requests as f64))
            })
        });
        if all_final && agrees {
            break (own, got);
        }
        if started.elapsed() > Duration::from_secs(30) {
            if !all_final {
                bail!("the nodes' request records were not all final after 30 s");
            }
            break (own, got);
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    println!(
        "Fleet of {nodes} nodes: per node and approach, from the central Prometheus (federating each node's) and from the node's own probe\n"
    );
    println!(
        "| node | approach | requests | tokens | wire B/tok (central) | wire B/tok (node's /api/requests) | packets/tok (central) | packets/tok (node's /metrics) | equal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut mismatches = 0;
    for (node, by) in &own {
        for (a, o) in by {
            let k = (node.clone(), a.clone());
            let c_bytes = bytes.get(&k).copied().unwrap_or(f64::NAN);
            let c_tokens = tokens.get(&k).copied().unwrap_or(f64::NAN);
            let c_packets = packets.get(&k).copied().unwrap_or(f64::NAN);
            let c_requests = requests.get(&k).copied().unwrap_or(f64::NAN);
            let equal = c_bytes == o.bytes as f64
                && c_tokens == o.tokens as f64
                && c_packets == o.packets as f64
                && c_requests == o.requests as f64;
            mismatches += usize::from(!equal);
            let per = |x: f64, t: f64| {
                if t > 0.0 {
                    format!("{:.1}", x / t)
                } else {
                    "-".into()
                }
            };
            println!(
                "| {node} | {a} | {} | {} | {} | {} | {} | {} | {} |",
                o.requests,
                o.tokens,
                per(c_bytes, c_tokens),
                per(o.bytes as f64, o.tokens as f64),
                per(c_packets, c_tokens),
                per(o.packets as f64, o.tokens as f64),
                if equal { "yes" } else { "NO" }
            );
        }
    }
    // The dashboard's fleet panels, against the central Prometheus: a series per node.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::workspace_root().join("grafana/dashboards/tokenwire.json"))
            .context("reading the dashboard")?,
    )
    .context("the dashboard is JSON")?;
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("");
        if !title.starts_with("Fleet:") {
            continue;
        }
        for target in p["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or("")
                .replace("$node", ".*")
                .replace("$approach", ".*")
                .replace("$__rate_interval", "1m");
            let seen: std::collections::BTreeSet<String> =
                query(&expr)?.into_keys().map(|(node, _)| node).collect();
            let want: std::collections::BTreeSet<String> = (1..=nodes).map(node_name).collect();
            if seen != want {
                bail!("the dashboard's panel {title:?} shows nodes {seen:?}, not {want:?}");
            }
            println!("dashboard panel {title:?}: a series for each of the {nodes} nodes");
        }
    }
    // Cardinality: the series each node's probe exports (the node label is the only
    // one the fleet adds).
    let series = query(r#"count by (node) ({__name__=~"tokenwire_.*"})"#)?;
    let counts: Vec<String> = series
        .iter()
        .map(|((node, _), n)| format!("{node} {n}"))
        .collect();
    println!(
        "series per node in the central Prometheus: {}",
        counts.join(", ")
    );
    if own.len() != nodes as usize || own.values().any(BTreeMap::is_empty) {
        bail!("a node reported no requests");
    }
    if mismatches > 0 {
        bail!("{mismatches} rows differ between the central Prometheus and the nodes' own figures");
    }
    println!("\nEvery node's figures in the central Prometheus equal the node's own.");
    Ok(())
}
