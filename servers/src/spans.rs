//! Telling the probe about requests (the spans protocol, docs/spans.md): one JSON datagram
//! per event on a Unix socket. Sending never blocks and never fails a request: the socket
//! is non-blocking, and a missing probe, a full buffer or any other error just drops the
//! message (counted in [`SpanSink::dropped`]).

use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The socket path the probe listens on by default.
pub const DEFAULT_SOCKET: &str = "/tmp/tokenwire/spans.sock";
/// The environment variable that overrides it (for servers and the probe alike).
pub const SOCKET_ENV: &str = "TOKENWIRE_SPANS";

struct Inner {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    /// Prefix of this process's request ids (unique across restarts: pid + start time).
    prefix: String,
    next: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// Where spans go; cheap to clone. [`SpanSink::disabled`] sends nothing.
#[derive(Clone, Default)]
pub struct SpanSink(Option<Arc<Inner>>);

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(i) => write!(f, "SpanSink({})", i.path.display()),
            None => write!(f, "SpanSink(disabled)"),
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl SpanSink {
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Sends to the socket at `path`. Whether a probe listens there does not matter, now
    /// or later.
    #[cfg(unix)]
    pub fn to_path(path: &Path) -> std::io::Result<Self> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Self(Some(Arc::new(Inner {
            socket,
            path: path.to_owned(),
            prefix: format!("{:x}-{:x}", std::process::id(), unix_ns() / 1_000_000),
            next: AtomicU64::new(1),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }))))
    }

    #[cfg(not(unix))]
    pub fn to_path(_path: &Path) -> std::io::Result<Self> {
        Ok(Self(None))
    }

    /// Messages handed to the socket.
    pub fn sent(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |i| i.sent.load(Ordering::Relaxed))
    }

    /// Messages dropped (no probe listening, buffer full, ...).
    pub fn dropped(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }

    fn send(&self, msg: serde_json::Value) {
        let Some(i) = &self.0 else {
            return;
        };
        #[cfg(unix)]
        {
            let bytes = msg.to_string();
            match i.socket.send_to(bytes.as_bytes(), &i.path) {
                Ok(_) => {
                    i.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    i.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (i, msg);
    }

    /// Starts a request's span; it ends when the returned guard is finished or dropped.
    pub fn request(
        &self,
        approach: &'static str,
        transport: &'static str,
        client: SocketAddr,
        server: SocketAddr,
    ) -> RequestSpan {
        let id = match &self.0 {
            Some(i) => format!("{}-{}", i.prefix, i.next.fetch_add(1, Ordering::Relaxed)),
            None => String::new(),
        };
        self.send(json!({
            "v": 1, "type": "start", "id": id, "approach": approach, "transport": transport,
            "client": client.to_string(), "server": server.to_string(), "time_unix_ns": unix_ns(),
        }));
        RequestSpan {
            sink: self.clone(),
            id,
            tokens: 0,
            app_bytes: 0,
            first_sent: false,
            ended: false,
        }
    }

    /// A connection ended.
    pub fn close(&self, transport: &'static str, client: SocketAddr, server: SocketAddr) {
        self.send(json!({
            "v": 1, "type": "close", "transport": transport,
            "client": client.to_string(), "server": server.to_string(), "time_unix_ns": unix_ns(),
        }));
    }
}

/// How a request ended, as the span says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Aborted,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Aborted => "aborted",
            Outcome::Error => "error",
        }
    }
}

/// One request in flight. Dropping it without [`RequestSpan::finish`] ends it as aborted
/// (the response body was dropped: the client went away).
pub struct RequestSpan {
    sink: SpanSink,
    id: String,
    tokens: u64,
    app_bytes: u64,
    first_sent: bool,
    ended: bool,
}

impl RequestSpan {
    /// `n` content tokens went out; the first one sends the first-token span.
    pub fn tokens(&mut self, n: u64) {
        if n > 0 && !self.first_sent {
            self.first_sent = true;
            self.sink.send(json!({
                "v": 1, "type": "first_token", "id": self.id, "time_unix_ns": unix_ns(),
            }));
        }
        self.tokens += n;
    }

    /// `n` bytes of response body (application bytes) went out.
    pub fn bytes(&mut self, n: usize) {
        self.app_bytes += n as u64;
    }

    /// Ends the span (once; later calls and the drop do nothing).
    pub fn finish(&mut self, outcome: Outcome) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.sink.send(json!({
            "v": 1, "type": "end", "id": self.id, "time_unix_ns": unix_ns(),
            "tokens": self.tokens, "app_bytes": self.app_bytes, "outcome": outcome.as_str(),
        }));
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        self.finish(Outcome::Aborted);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn sends_start_first_token_end_and_never_fails_without_a_listener() {
        let dir = std::env::temp_dir().join(format!("tokenwire-spans-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        // Nobody listens: nothing fails, everything is counted as dropped.
        let sink = SpanSink::to_path(&path).unwrap();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut r = sink.request("sse", "tls", a, a);
        r.tokens(1);
        drop(r);
        assert_eq!((sink.sent(), sink.dropped()), (0, 3));

        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut r = sink.request("sse", "tls", a, a);
        r.tokens(2);
        r.tokens(1);
        r.bytes(10);
        r.finish(Outcome::Ok);
        let mut buf = [0u8; 4096];
        let mut msgs = Vec::new();
        for _ in 0..3 {
            let n = rx.recv(&mut buf).unwrap();
            msgs.push(serde_json::from_slice::<serde_json::Value>(&buf[..n]).unwrap());
        }
        assert_eq!(msgs[0]["type"], "start");
        assert_eq!(msgs[1]["type"], "first_token");
        assert_eq!(msgs[2]["tokens"], 3);
        assert_eq!(msgs[2]["app_bytes"], 10);
        assert_eq!(msgs[2]["outcome"], "ok");
        assert_eq!(msgs[0]["id"], msgs[2]["id"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
