//! A real Prometheus (Debian package prometheus) scraping a probe, with the shipped
//! grafana/prometheus.yml pointed at it.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    /// Starts prometheus with the shipped config, scraping `target` every `scrape_interval`
    /// (a Prometheus duration: "1s", "200ms").
    pub fn start(target: SocketAddr, scrape_interval: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tokenwire-prom-{}-{}",
            std::process::id(),
            target.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(Path::new(ROOT).join("grafana/prometheus.yml"))
            .expect("grafana/prometheus.yml");
        assert!(
            shipped.contains("127.0.0.1:9464"),
            "the shipped config scrapes the default"
        );
        let config = shipped
            .replace("127.0.0.1:9464", &target.to_string())
            .replace(
                "scrape_interval: 5s",
                &format!("scrape_interval: {scrape_interval}"),
            );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; `cargo xtask setup` installs it)");
        let p = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.get("/-/ready").is_none() {
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn get(&self, path_and_query: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).ok()?;
        write!(
            s,
            "GET {path_and_query} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        if !resp.starts_with("HTTP/1.1 200") {
            return None;
        }
        let body = resp.split_once("\r\n\r\n")?.1;
        // Prometheus answers small bodies whole and large ones chunked.
        if resp
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Some(dechunk(body));
        }
        Some(body.to_owned())
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let q = format!("/api/v1/query?query={}", encode(expr));
        let body = self
            .get(&q)
            .unwrap_or_else(|| panic!("prometheus refused {expr}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n..];
        rest = rest.strip_prefix("\r\n").unwrap_or(rest);
    }
    out
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
