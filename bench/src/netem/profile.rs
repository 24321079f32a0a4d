//! Network profiles: the reference's five, and custom ones, as the shape of each direction
//! of the emulated link.

use super::model::{QueueLimit, Shape};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which directions a profile shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to server only: what the reference did (its pf rules matched the server
    /// port as destination), so its loss and bandwidth caps never touched the tokens.
    Up,
    /// Server to client only: the token stream.
    Down,
    /// Both directions, each with the profile's full impairments.
    Both,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }
}

/// A named set of impairments, applied per shaped direction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Profile {
    pub name: String,
    #[serde(serialize_with = "ser_ms")]
    pub delay: Duration,
    /// 0..=1.
    pub loss: f64,
    pub rate_bps: Option<u64>,
    pub queue_packets: Option<usize>,
    pub queue_bytes: Option<usize>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// dummynet's and this emulator's default queue: 50 packets.
pub const DEFAULT_QUEUE: usize = 50;

impl Profile {
    pub const NAMES: [&'static str; 5] = [
        "baseline",
        "latency-200ms",
        "loss-5pct",
        "bw-100kbps",
        "degraded",
    ];

    /// One of the reference's profiles.
    pub fn named(name: &str) -> Result<Self, ProfileError> {
        let p = |delay_ms: u64, loss: f64, rate: Option<u64>| Profile {
            name: name.to_owned(),
            delay: Duration::from_millis(delay_ms),
            loss,
            rate_bps: rate,
            queue_packets: None,
            queue_bytes: None,
        };
        Ok(match name {
            "baseline" => p(0, 0.0, None),
            "latency-200ms" => p(200, 0.0, None),
            "loss-5pct" => p(0, 0.05, None),
            "bw-100kbps" => p(0, 0.0, Some(100_000)),
            "degraded" => p(200, 0.05, Some(100_000)),
            other => return Err(ProfileError::Unknown(other.to_owned())),
        })
    }

    /// The shape of one shaped direction.
    pub fn shape(&self) -> Shape {
        Shape {
            delay: self.delay,
            loss: self.loss,
            rate_bps: self.rate_bps,
            queue: match (self.queue_bytes, self.queue_packets) {
                (Some(b), _) => QueueLimit::Bytes(b),
                (None, Some(p)) => QueueLimit::Packets(p),
                (None, None) => QueueLimit::Packets(DEFAULT_QUEUE),
            },
        }
    }

    /// (up, down) shapes for `dir`: an unshaped direction passes packets untouched.
    pub fn shapes(&self, dir: Direction) -> (Shape, Shape) {
        let s = self.shape();
        match dir {
            Direction::Up => (s, Shape::NONE),
            Direction::Down => (Shape::NONE, s),
            Direction::Both => (s, s),
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.delay.is_zero() {
            parts.push(format!("delay {} ms", self.delay.as_millis()));
        }
        if self.loss > 0.0 {
            parts.push(format!("loss {}%", self.loss * 100.0));
        }
        if let Some(r) = self.rate_bps {
            parts.push(format!("rate {}", Rate(r)));
        }
        // Without a rate nothing waits, so the queue never fills: say so only with one.
        if self.rate_bps.is_some() {
            match self.shape().queue {
                QueueLimit::Packets(n) => parts.push(format!("queue {n} packets")),
                QueueLimit::Bytes(b) => parts.push(format!("queue {b} bytes")),
            }
        }
        if parts.is_empty() {
            return "no impairment".into();
        }
        parts.join(", ")
    }
}

/// Other tools' commands for the same link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommandSet {
    /// Linux tc netem (kernels with sch_netem), one qdisc per shaped side.
    Netem,
    /// macOS dnctl pipes with pf rules matching the servers' ports.
    Dummynet,
}

impl Profile {
    /// The commands that set the same pipes with another tool, for the companions' ports.
    /// Printed for people; not run or tested here (this kernel has no sch_netem).
    pub fn commands(&self, dir: Direction, set: CommandSet) -> String {
        let shaped = |d: Direction| dir == Direction::Both || dir == d;
        let mut out = Vec::new();
        match set {
            CommandSet::Netem => {
                let mut args = vec![format!("delay {}ms", self.delay.as_millis())];
                if self.loss > 0.0 {
                    args.push(format!("loss {}%", self.loss * 100.0));
                }
                if let Some(r) = self.rate_bps {
                    args.push(format!("rate {}", Rate(r)));
                }
                args.push(format!(
                    "limit {}",
                    self.queue_packets.unwrap_or(DEFAULT_QUEUE)
                ));
                let a = args.join(" ");
                if shaped(Direction::Up) {
                    out.push("# up (client to server): on the client side's egress device".into());
                    out.push(format!("tc qdisc replace dev CLIENT_DEV root netem {a}"));
                }
                if shaped(Direction::Down) {
                    out.push(
                        "# down (server to client): on the server side's egress device".into(),
                    );
                    out.push(format!("tc qdisc replace dev SERVER_DEV root netem {a}"));
                }
            }
            CommandSet::Dummynet => {
                let mut cfg = format!("delay {}", self.delay.as_millis());
                if self.loss > 0.0 {
                    cfg.push_str(&format!(" plr {}", self.loss));
                }
                if let Some(r) = self.rate_bps {
                    cfg.push_str(&format!(" bw {}Kbit/s", r / 1000));
                }
                cfg.push_str(&format!(
                    " queue {}",
                    self.queue_packets.unwrap_or(DEFAULT_QUEUE)
                ));
                // One pipe per port and direction, as the reference's benchmark.sh: a
                // pipe's bandwidth and queue are then never shared between approaches.
                let ports = [("tcp", 8080), ("udp", 4433), ("tcp", 11435)];
                let mut rules = Vec::new();
                let mut pipe = 0;
                for (d, side, name) in [
                    (Direction::Up, "to", "up"),
                    (Direction::Down, "from", "down"),
                ] {
                    if !shaped(d) {
                        continue;
                    }
                    for (proto, port) in ports {
                        pipe += 1;
                        out.push(format!(
                            "sudo dnctl pipe {pipe} config {cfg}   # {proto} :{port} {name}"
                        ));
                        rules.push(match side {
                            "to" => format!(
                                "dummynet out proto {proto} from any to localhost port {port} pipe {pipe}"
                            ),
                            _ => format!(
                                "dummynet out proto {proto} from localhost port {port} to any pipe {pipe}"
                            ),
                        });
                    }
                }
                out.push(format!(
                    "printf '%s\\n' {} | sudo pfctl -f - && sudo pfctl -e",
                    rules
                        .iter()
                        .map(|r| format!("'{r}'"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                out.push("# undo: sudo pfctl -f /etc/pf.conf; sudo dnctl -q flush".into());
            }
        }
        out.join("\n")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error(
        "unknown profile {0:?}: baseline, latency-200ms, loss-5pct, bw-100kbps, degraded, or custom with --delay/--loss/--rate/--queue"
    )]
    Unknown(String),
    #[error("{what} {value:?}: {why}")]
    Bad {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// A duration like `50ms`, `0.2s`, `200` (milliseconds).
pub fn parse_delay(s: &str) -> Result<Duration, ProfileError> {
    let bad = |why| ProfileError::Bad {
        what: "delay",
        value: s.to_owned(),
        why,
    };
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1e-3)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad("expected e.g. 50ms"))?;
    if !(v.is_finite() && v >= 0.0 && v * scale <= 60.0) {
        return Err(bad("must be 0 to 60 s"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// A loss like `5%`, `0.05`.
pub fn parse_loss(s: &str) -> Result<f64, ProfileError> {
    let bad = |why| ProfileError::Bad {
        what: "loss",
        value: s.to_owned(),
        why,
    };
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(n) => {
            n.trim()
                .parse::<f64>()
                .map_err(|_| bad("expected e.g. 5%"))?
                / 100.0
        }
        None => t.parse::<f64>().map_err(|_| bad("expected e.g. 5%"))?,
    };
    if !(0.0..=1.0).contains(&v) {
        return Err(bad("must be 0% to 100%"));
    }
    Ok(v)
}

/// Bits per second, printed and parsed as tc does: `100kbit`, `2mbit`, `1gbit`, `9600`
/// (bit/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, ProfileError> {
        let bad = |why| ProfileError::Bad {
            what: "rate",
            value: s.to_owned(),
            why,
        };
        let t = s.trim().to_ascii_lowercase();
        let (num, mult) = [
            ("gbit", 1e9),
            ("mbit", 1e6),
            ("kbit", 1e3),
            ("bit", 1.0),
            ("gbps", 8e9),
            ("mbps", 8e6),
            ("kbps", 8e3),
        ]
        .iter()
        .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.to_owned(), *m)))
        .unwrap_or((t.clone(), 1.0));
        let v: f64 = num.trim().parse().map_err(|_| bad("expected e.g. 2mbit"))?;
        let bps = v * mult;
        if !(bps.is_finite() && (1_000.0..=100e9).contains(&bps)) {
            return Err(bad("must be 1kbit to 100gbit"));
        }
        Ok(Rate(bps as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if r >= 1_000_000 && r.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", r / 1_000_000)
        } else if r >= 1_000 && r.is_multiple_of(1_000) {
            write!(f, "{}kbit", r / 1_000)
        } else {
            write!(f, "{r}bit")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_profiles() {
        let d = Profile::named("degraded").unwrap();
        assert_eq!(d.delay, Duration::from_millis(200));
        assert_eq!(d.loss, 0.05);
        assert_eq!(d.rate_bps, Some(100_000));
        assert_eq!(d.shape().queue, QueueLimit::Packets(50));
        let (up, down) = d.shapes(Direction::Up);
        assert_eq!(up.delay, Duration::from_millis(200));
        assert_eq!(down, Shape::NONE);
        assert_eq!(
            Profile::named("baseline").unwrap().describe(),
            "no impairment"
        );
        assert!(matches!(
            Profile::named("fast"),
            Err(ProfileError::Unknown(_))
        ));
        assert_eq!(
            d.describe(),
            "delay 200 ms, loss 5%, rate 100kbit, queue 50 packets"
        );
    }

    #[test]
    fn parses_like_tc() {
        assert_eq!(parse_delay("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_delay("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_delay("200"), Ok(Duration::from_millis(200)));
        assert!(parse_delay("-1ms").is_err());
        assert_eq!(parse_loss("5%"), Ok(0.05));
        assert_eq!(parse_loss("0.01"), Ok(0.01));
        assert!(parse_loss("150%").is_err());
        assert_eq!("2mbit".parse::<Rate>(), Ok(Rate(2_000_000)));
        assert_eq!("100kbit".parse::<Rate>(), Ok(Rate(100_000)));
        assert_eq!("1mbps".parse::<Rate>(), Ok(Rate(8_000_000)));
        assert!("fast".parse::<Rate>().is_err());
        assert!("10bit".parse::<Rate>().is_err());
        let d = Profile::named("degraded").unwrap();
        assert_eq!(
            d.commands(Direction::Up, CommandSet::Netem),
            "# up (client to server): on the client side's egress device\ntc qdisc replace dev CLIENT_DEV root netem delay 200ms loss 5% rate 100kbit limit 50"
        );
        let mac = d.commands(Direction::Up, CommandSet::Dummynet);
        assert!(mac.contains("dnctl pipe 1 config delay 200 plr 0.05 bw 100Kbit/s queue 50"));
        // One pipe per port, as the reference's benchmark.sh.
        assert!(mac.contains("'dummynet out proto tcp from any to localhost port 8080 pipe 1'"));
        assert!(mac.contains("'dummynet out proto udp from any to localhost port 4433 pipe 2'"));
        assert!(mac.contains("'dummynet out proto tcp from any to localhost port 11435 pipe 3'"));
        assert!(!mac.contains("pipe 4"));
        let both = d.commands(Direction::Both, CommandSet::Dummynet);
        assert!(both.contains("'dummynet out proto udp from localhost port 4433 to any pipe 5'"));
        assert!(both.contains("dnctl pipe 6 config"));
        assert_eq!(Rate(100_000).to_string(), "100kbit");
    }
}
