//! Transport settings that change what a token costs on the wire: each one a [`Knob`],
//! named sets of them a [`Tuning`] (`--tuning default`, `--tuning lean`, or one knob
//! alone in `tokenwire-bench matrix`). Some knobs are the server's, some the client's,
//! one the network namespace's; each side applies its own. docs/wire-efficiency.md has
//! the packet anatomy each one acts on and its measured effect.
//!
//! `lean` is every knob: all of them lower bytes without holding any token back.
//! Coalescing tokens (`--coalesce-ms`) does hold tokens back, so it is not a knob of
//! `lean` but a separate setting.

use std::fmt;
use std::time::Duration;

/// One transport setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Knob {
    /// Client: zero-length QUIC connection IDs. The server puts the client's ID in every
    /// packet it sends, so each token's packet is 8 bytes shorter (quinn's IDs are 8).
    /// quinn routes packets without an ID by address, so each session gets a UDP socket of
    /// its own.
    ClientCid0,
    /// Server: 4-byte QUIC connection IDs (quic-go's length) instead of quinn's 8, in every
    /// packet the client sends (its ACKs). Not zero: a server without IDs cannot tell apart
    /// two sessions from one client socket, which clients that share a socket have.
    ServerCid4,
    /// Both: no ECN. An ACK frame that reports ECN carries three counters (about 4 bytes).
    NoEcn,
    /// Server: asks the client, with the ACK frequency extension
    /// (draft-ietf-quic-ack-frequency), to acknowledge every 10th packet or after 100 ms.
    /// quinn requests at most max(RTT, 25 ms), so it acts only where the RTT is longer than
    /// the time between tokens.
    AckFrequency,
    /// Client: TCP delayed ACKs. Linux acknowledges a small pushed segment as soon as the
    /// application has read it, unless the socket is in "ping-pong" (interactive) mode;
    /// the client puts it back there (`TCP_QUICKACK` off) after every read, so the kernel
    /// acknowledges every second token or after its delayed-ACK timer.
    DelayedAcks,
    /// Both: no TCP timestamps option (12 bytes in every segment). Linux has no socket
    /// option for it: `net.ipv4.tcp_timestamps=0` in the network namespace of either end.
    NoTimestamps,
}

impl Knob {
    pub const ALL: [Knob; 6] = [
        Knob::ClientCid0,
        Knob::ServerCid4,
        Knob::NoEcn,
        Knob::AckFrequency,
        Knob::DelayedAcks,
        Knob::NoTimestamps,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Knob::ClientCid0 => "client-cid0",
            Knob::ServerCid4 => "server-cid4",
            Knob::NoEcn => "no-ecn",
            Knob::AckFrequency => "ack-frequency",
            Knob::DelayedAcks => "delayed-acks",
            Knob::NoTimestamps => "no-timestamps",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The ACK frequency a QUIC server asks its clients for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrequency {
    /// Ack-eliciting packets the client may receive without acknowledging at once.
    pub threshold: u32,
    /// The longest the client may wait before acknowledging (quinn caps what it requests
    /// at max(RTT, 25 ms)); `None`: the client's own (25 ms for quinn).
    pub max_delay: Option<Duration>,
}

/// What [`Knob::AckFrequency`] asks for.
pub const LEAN_ACK_FREQUENCY: AckFrequency = AckFrequency {
    threshold: 10,
    max_delay: Some(Duration::from_millis(100)),
};

/// The server connection ID length of [`Knob::ServerCid4`].
pub const LEAN_SERVER_CID_LEN: usize = 4;

/// A named set of knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    pub name: String,
    pub knobs: Vec<Knob>,
}

/// A `--tuning` value that is neither a preset nor a knob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tuning {0:?}: expected default, lean, or one of the knobs {knobs}", knobs = Knob::ALL.map(Knob::name).join(", "))]
pub struct UnknownTuning(pub String);

impl Tuning {
    /// No knob: quinn's, rustls' and the kernel's defaults.
    pub fn standard() -> Self {
        Self {
            name: "default".into(),
            knobs: Vec::new(),
        }
    }

    /// Every knob.
    pub fn lean() -> Self {
        Self {
            name: "lean".into(),
            knobs: Knob::ALL.to_vec(),
        }
    }

    /// `default`, `lean`, or one knob's name (that knob alone).
    pub fn parse(s: &str) -> Result<Self, UnknownTuning> {
        match s.trim() {
            "default" => Ok(Self::standard()),
            "lean" => Ok(Self::lean()),
            other => Knob::from_name(other)
                .map(|k| Self {
                    name: k.name().into(),
                    knobs: vec![k],
                })
                .ok_or_else(|| UnknownTuning(other.into())),
        }
    }

    pub fn has(&self, knob: Knob) -> bool {
        self.knobs.contains(&knob)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self::standard()
    }
}

impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Whether TCP timestamps are on in the calling thread's network namespace
/// (`net.ipv4.tcp_timestamps`); `None` where that cannot be read.
pub fn tcp_timestamps_on() -> Option<bool> {
    let v = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_timestamps").ok()?;
    Some(v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for k in Knob::ALL {
            assert_eq!(Tuning::parse(k.name()).unwrap().knobs, vec![k]);
        }
        assert_eq!(Tuning::parse("lean").unwrap().knobs, Knob::ALL.to_vec());
        assert!(Tuning::parse("default").unwrap().knobs.is_empty());
        let e = Tuning::parse("fast").unwrap_err().to_string();
        assert!(e.contains("client-cid0") && e.contains("\"fast\""), "{e}");
    }
}
