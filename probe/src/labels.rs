//! Which approach a server port belongs to: the companions' defaults (the approach
//! registry's ports and labels) and the model's, overridable with `--label PORT=NAME`.

use std::collections::BTreeMap;
use tokenwire_probe_common::approach::{Approach, MODEL_LABEL, MODEL_PORT};

/// Each approach's default port and label, and the model's.
pub fn default_labels() -> impl Iterator<Item = (u16, &'static str)> {
    Approach::ALL
        .into_iter()
        .map(|a| (a.port(), a.label()))
        .chain([(MODEL_PORT, MODEL_LABEL)])
}

/// Server port -> approach name.
#[derive(Debug, Clone)]
pub struct Labels(BTreeMap<u16, String>);

impl Default for Labels {
    fn default() -> Self {
        Self(default_labels().map(|(p, n)| (p, n.to_owned())).collect())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad label {0:?}: expected PORT=NAME, e.g. 9000=my-server (NAME: letters, digits, _ and -)"
)]
pub struct BadLabel(pub String);

impl Labels {
    /// The defaults plus `PORT=NAME` overrides (a later one wins).
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, BadLabel> {
        let mut l = Self::default();
        for o in overrides {
            let bad = || BadLabel(o.to_owned());
            let (port, name) = o.split_once('=').ok_or_else(bad)?;
            let port: u16 = port.trim().parse().map_err(|_| bad())?;
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad());
            }
            l.0.insert(port, name.to_owned());
        }
        Ok(l)
    }

    pub fn get(&self, port: u16) -> Option<&str> {
        self.0.get(&port).map(String::as_str)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let l = Labels::with_overrides(["9000=my-server", "8080=relay"]).unwrap();
        assert_eq!(l.get(11435), Some("raw_api"));
        assert_eq!(l.get(9000), Some("my-server"));
        assert_eq!(l.get(8080), Some("relay"));
        assert_eq!(l.get(1), None);
        for bad in ["9000", "x=y", "70000=a", "9000=", "9000=a b"] {
            assert_eq!(
                Labels::with_overrides([bad]).unwrap_err(),
                BadLabel(bad.into())
            );
        }
    }
}
