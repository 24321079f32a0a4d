//! The probe binary and the companions, as tests run them: a `tokenwire-probe run` with its
//! own spans socket and API port, and a stack of servers sending spans to it.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokenwire_bench::client::Targets;
use tokenwire_bench::client::tls::Trust;
use tokenwire_probe_common::launch::{ProbeLaunch, RunningProbe};
use tokenwire_servers::launch::RelayOptions;
use tokenwire_servers::model::{ModelConfig, Timing};
use tokenwire_servers::spans::SpanSink;
use tokenwire_servers::stack as servers;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwire-probe");

/// A `tokenwire-probe run` process with its own spans socket and API port, started by the
/// one launcher (`tokenwire_probe_common::launch`), which waits for its ready file.
pub struct Probe {
    running: RunningProbe,
    pub api: SocketAddr,
}

impl Probe {
    pub fn start(backend: &str, spans: &std::path::Path, labels: &[String]) -> Self {
        Self::start_with(backend, spans, labels, &[])
    }

    pub fn start_with(
        backend: &str,
        spans: &std::path::Path,
        labels: &[String],
        extra: &[String],
    ) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--iface", "lo", "--backend", backend, "--quiet"])
            .args(["--interval", "3600", "--listen", "127.0.0.1:0", "--spans"])
            .arg(spans)
            .args(extra)
            .stdout(Stdio::null());
        for l in labels {
            cmd.args(["--label", l]);
        }
        let running = ProbeLaunch::new(cmd).start().unwrap();
        Self {
            api: running.api(),
            running,
        }
    }

    pub fn pid(&self) -> u32 {
        self.running.child.id()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(self.api).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }

    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the connection with `client` is final and returns it with its requests.
    pub fn settled(&self, client: SocketAddr) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let conns = self.json("/api/connections");
            let conn = conns["connections"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["client"] == client.to_string())
                .cloned();
            if let Some(c) = conn
                && c["final"] == true
            {
                let reqs: Vec<Value> = self.json("/api/requests")["requests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["client"] == client.to_string())
                    .cloned()
                    .collect();
                return (c, reqs);
            }
            assert!(
                Instant::now() < deadline,
                "connection {client} never became final"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.running.stop("TERM");
    }
}

pub fn spans_path(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("tokenwire-attr-{tag}-{}", std::process::id()))
        .join("spans.sock")
}

/// The servers (the library's [`servers::Stack`]) sending spans to a probe, with what a
/// client needs to trust them. Derefs to the servers: `stack[Approach::Sse]`.
pub struct Stack {
    pub servers: servers::Stack,
    /// The model's plain HTTP address (the relays' upstream).
    pub model: SocketAddr,
    pub trust: Trust,
    /// The companions' certificate (PEM).
    pub cert: PathBuf,
}

impl std::ops::Deref for Stack {
    type Target = servers::Stack;
    fn deref(&self) -> &servers::Stack {
        &self.servers
    }
}

impl Stack {
    /// The model the stack runs: fast and short.
    pub fn model_config() -> ModelConfig {
        ModelConfig {
            timing: Timing {
                speed: 20.0,
                mean_tokens: 30,
                ..Timing::default()
            },
            ..ModelConfig::default()
        }
    }

    pub async fn start(tag: &str, spans: SpanSink) -> Self {
        Self::start_with(tag, spans, Self::model_config()).await
    }

    /// A stack whose model runs `cfg`.
    pub async fn start_with(tag: &str, spans: SpanSink, cfg: ModelConfig) -> Self {
        let id = super::identity(&format!("attr-{tag}"));
        let opts = RelayOptions {
            spans,
            ..RelayOptions::default()
        };
        let servers = servers::Stack::ephemeral()
            .model(cfg)
            .relay(opts)
            .start(&id)
            .await
            .unwrap();
        Self {
            model: servers.model_addr().unwrap(),
            servers,
            trust: Trust::Pinned(id.cert_der.clone()),
            cert: id.cert_path.clone(),
        }
    }

    pub fn targets(&self) -> Targets {
        Targets::of(&self.servers)
    }
}

/// One prompt as one stream of a WebTransport session, read to its end: the bytes it
/// returned.
#[allow(dead_code)] // not every test binary streams on a shared session
pub async fn wt_stream(session: &wtransport::Connection, prompt: &str) -> usize {
    wt_stream_together(session, prompt, &tokio::sync::Barrier::new(1)).await
}

/// [`wt_stream`], sending the prompt only once every stream waiting on `together` is open:
/// the streams then run at once, however slowly the machine opens them.
#[allow(dead_code)]
pub async fn wt_stream_together(
    session: &wtransport::Connection,
    prompt: &str,
    together: &tokio::sync::Barrier,
) -> usize {
    tokenwire_bench::client::wt::exchange(session, prompt, || async {
        together.wait().await;
    })
    .await
    .unwrap()
}
