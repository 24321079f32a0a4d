//! The three ways of streaming tokens the benchmark compares.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approach {
    /// POST /v1/chat/completions (stream) through the TLS reverse proxy.
    Raw,
    /// POST /chat on the HTTPS SSE relay.
    Sse,
    /// One bidirectional stream per prompt on a WebTransport session.
    Wt,
}

impl Approach {
    pub const ALL: [Approach; 3] = [Approach::Raw, Approach::Sse, Approach::Wt];

    pub fn as_str(self) -> &'static str {
        match self {
            Approach::Raw => "raw",
            Approach::Sse => "sse",
            Approach::Wt => "wt",
        }
    }

    /// The reference study's name for it.
    pub fn title(self) -> &'static str {
        match self {
            Approach::Raw => "Raw API",
            Approach::Sse => "HTTP SSE",
            Approach::Wt => "WebTransport",
        }
    }
}

impl fmt::Display for Approach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Approach {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Approach::Raw),
            "sse" => Ok(Approach::Sse),
            "wt" => Ok(Approach::Wt),
            other => Err(format!(
                "unknown approach {other:?}: expected raw, sse or wt"
            )),
        }
    }
}
