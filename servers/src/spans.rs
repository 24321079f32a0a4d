//! Telling the probe about requests (the spans protocol, docs/spans.md): one JSON datagram
//! per event on a Unix socket. Sending never blocks and never fails a request.
//!
//! A Unix datagram socket queues only `net.unix.max_dgram_qlen` messages for its reader
//! (10 by default on Linux), so a non-blocking send into it loses spans whenever the probe
//! is a few milliseconds behind a burst: measured at 1,000 concurrent streams, 68 spans of
//! 13,000. So requests hand their messages to a bounded queue ([`QUEUE`] messages), and one
//! thread sends them in order with blocking sends, waiting for the probe to drain its
//! socket (at most [`SEND_TIMEOUT`] per message). A missing probe, a full queue or any
//! other error drops the message, counted in [`SpanSink::dropped`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokenwire_probe_common::approach::{Approach, Transport};

use tokenwire_probe_common::spans::Message;
pub use tokenwire_probe_common::spans::{DEFAULT_SOCKET, EndOutcome as Outcome, SOCKET_ENV};

/// Messages waiting for the sender thread, at most.
pub const QUEUE: usize = 65_536;
/// How long the sender thread waits for room in the probe's socket per message.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
}

struct Inner {
    #[cfg(unix)]
    queue: std::sync::mpsc::SyncSender<Vec<u8>>,
    path: PathBuf,
    /// Prefix of this process's request ids (unique across restarts: pid + start time).
    prefix: String,
    next: AtomicU64,
    counters: Arc<Counters>,
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
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        let (queue, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let counters = Arc::new(Counters::default());
        let (c, to) = (counters.clone(), path.to_owned());
        // Ends when every sink is gone (the channel closes).
        std::thread::Builder::new()
            .name("tokenwire-spans".into())
            .spawn(move || {
                for msg in rx {
                    let n = match socket.send_to(&msg, &to) {
                        Ok(_) => &c.sent,
                        Err(_) => &c.dropped,
                    };
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        Ok(Self(Some(Arc::new(Inner {
            queue,
            path: path.to_owned(),
            prefix: format!("{:x}-{:x}", std::process::id(), unix_ns() / 1_000_000),
            next: AtomicU64::new(1),
            counters,
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
            .map_or(0, |i| i.counters.sent.load(Ordering::Relaxed))
    }

    /// Messages dropped (no probe listening, queue full, the probe stuck, ...).
    pub fn dropped(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |i| i.counters.dropped.load(Ordering::Relaxed))
    }

    fn send(&self, msg: Message) {
        let Some(i) = &self.0 else {
            return;
        };
        #[cfg(unix)]
        let Ok(bytes) = serde_json::to_vec(&msg) else {
            i.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        #[cfg(unix)]
        if i.queue.try_send(bytes).is_err() {
            i.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(not(unix))]
        let _ = (i, msg);
    }

    /// Starts a request's span; it ends when the returned guard is finished or dropped.
    pub fn request(
        &self,
        approach: Approach,
        client: SocketAddr,
        server: SocketAddr,
    ) -> RequestSpan {
        self.request_labelled(approach.label(), approach.transport(), client, server)
    }

    /// A request under a label of its own, not an approach's (the browser page's `page`).
    pub fn request_labelled(
        &self,
        approach: &'static str,
        transport: Transport,
        client: SocketAddr,
        server: SocketAddr,
    ) -> RequestSpan {
        let transport = transport.as_str();
        let id = match &self.0 {
            Some(i) => format!("{}-{}", i.prefix, i.next.fetch_add(1, Ordering::Relaxed)),
            None => String::new(),
        };
        self.send(Message::start(
            &id,
            approach,
            transport,
            client,
            server,
            unix_ns(),
        ));
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
    pub fn close(&self, transport: Transport, client: SocketAddr, server: SocketAddr) {
        self.send(Message::close(
            transport.as_str(),
            client,
            server,
            unix_ns(),
        ));
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
            self.sink.send(Message::first_token(&self.id, unix_ns()));
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
        self.sink.send(Message::end(
            &self.id,
            self.tokens,
            self.app_bytes,
            outcome,
            unix_ns(),
        ));
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
        let mut r = sink.request(Approach::Sse, a, a);
        r.tokens(1);
        drop(r);
        // The sender thread gets to them shortly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sink.dropped() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!((sink.sent(), sink.dropped()), (0, 3));

        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut r = sink.request(Approach::Sse, a, a);
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

    #[test]
    fn a_burst_from_many_threads_reaches_a_slow_reader_whole_and_in_order() {
        let dir =
            std::env::temp_dir().join(format!("tokenwire-spans-burst-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // A lost message fails the test rather than hanging it.
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let sink = SpanSink::to_path(&path).unwrap();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        // 8 threads x 250 requests (start, first token, end): 6,000 messages at once, far
        // more than the socket's queue of net.unix.max_dgram_qlen (10 by default) holds.
        let senders: Vec<_> = (0..8)
            .map(|_| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        let mut r = sink.request(Approach::Sse, a, a);
                        r.tokens(1);
                        r.finish(Outcome::Ok);
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        // The reader is slow: it naps every hundred messages.
        let mut buf = [0u8; 4096];
        let mut seen = std::collections::HashMap::new();
        for n in 0..6000 {
            if n % 100 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let len = rx.recv(&mut buf).unwrap();
            let m: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
            let id = m["id"].as_str().unwrap().to_owned();
            let order = ["start", "first_token", "end"];
            let k = seen.entry(id).or_insert(0usize);
            // Each request's messages arrive in the order sent.
            assert_eq!(m["type"], order[*k], "{m}");
            *k += 1;
        }
        assert_eq!(seen.len(), 2000);
        assert!(seen.values().all(|&k| k == 3));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sink.sent() < 6000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!((sink.sent(), sink.dropped()), (6000, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
