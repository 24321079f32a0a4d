//! The flow table carried from one probe to the next over a restart with pinned maps
//! (`--pin`, docs/reliability.md). The kernel's pinned maps keep counting while no probe
//! runs, but they hold only each key's current totals: what the table adds on top lives in
//! user space and would be lost with the process. That is the totals of evicted keys and
//! retired connections (gone from the kernel), what each key exported under which series
//! (so no series goes down when a connection's labels are learnt again), and each
//! connection's classification (its ClientHello, SYN and first payload were seen once and
//! are not sent again). The probe writes this after every counter read that changed it and
//! at exit; the next probe reads it before its first read, so its first counters continue
//! the last.

use super::{Conn, ConnId, FlowTable, KeyState, WireKey};
use crate::flow::{Counters, Direction, PacketKey, Transport};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    #[error("not a flow table this probe can read: {0}")]
    Json(#[from] serde_json::Error),
    #[error("it belongs to pinned maps of generation {found:016x}, not {expected:016x}")]
    Generation { found: u64, expected: u64 },
}

/// An exported wire series.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Series {
    approach: String,
    transport: Transport,
    direction: Direction,
}

impl Series {
    fn of(k: &WireKey) -> Option<Self> {
        Some(Self {
            approach: k.0.clone(),
            transport: Transport::from_name(k.1)?,
            direction: Direction::from_name(k.2)?,
        })
    }

    fn key(self) -> WireKey {
        (
            self.approach,
            self.transport.as_str(),
            self.direction.as_str(),
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedKey {
    key: PacketKey,
    base: Counters,
    live: Counters,
    exported: Option<(Series, Counters)>,
    pinned: Vec<(Series, Counters)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedConn {
    syn_client: Option<SocketAddr>,
    first_sender: Option<SocketAddr>,
    transport: Option<Transport>,
    sni: Option<String>,
    alpn: Vec<String>,
    closed: bool,
    keys: Vec<CarriedKey>,
}

/// What a probe hands the next one: see the module comment.
#[derive(Debug, Serialize, Deserialize)]
pub struct CarriedTable {
    /// The pinned maps' generation ([`tokenwire_probe_common::PinMeta::generation`]).
    generation: u64,
    evictions: u64,
    retired: Vec<(Series, Counters)>,
    conns: Vec<CarriedConn>,
}

fn series(parts: &[(WireKey, Counters)]) -> Vec<(Series, Counters)> {
    parts
        .iter()
        .filter_map(|(k, c)| Some((Series::of(k)?, *c)))
        .collect()
}

impl CarriedTable {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads one written for the pinned maps of `generation`.
    pub fn from_json(bytes: &[u8], generation: u64) -> Result<Self, CarryError> {
        let t: Self = serde_json::from_slice(bytes)?;
        if t.generation != generation {
            return Err(CarryError::Generation {
                found: t.generation,
                expected: generation,
            });
        }
        Ok(t)
    }

    /// Connections it carries.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

impl FlowTable {
    /// What the next probe needs to continue this one's counters (pinned maps of
    /// `generation`).
    pub fn carry_out(&self, generation: u64) -> CarriedTable {
        let mut conns: Vec<(&ConnId, &Conn)> = self.conns.iter().collect();
        conns.sort_by_key(|(_, c)| c.seq);
        CarriedTable {
            generation,
            evictions: self.evictions,
            retired: self
                .retired
                .iter()
                .filter_map(|(k, c)| Some((Series::of(k)?, *c)))
                .collect(),
            conns: conns
                .into_iter()
                .map(|(_, c)| CarriedConn {
                    syn_client: c.syn_client,
                    first_sender: c.first_sender,
                    transport: c.transport,
                    sni: c.sni.clone(),
                    alpn: c.alpn.clone(),
                    closed: c.closed,
                    keys: c
                        .keys
                        .iter()
                        .map(|(k, ks)| CarriedKey {
                            key: *k,
                            base: ks.base,
                            live: ks.live,
                            exported: ks
                                .exported
                                .as_ref()
                                .and_then(|(s, c)| Some((Series::of(s)?, *c))),
                            pinned: series(&ks.pinned),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Takes over a previous probe's table (before the first counter read): its
    /// connections, their keys' totals and series, the retired totals. Returns how many
    /// connections it carried.
    pub fn carry_in(&mut self, carried: CarriedTable, now: Instant) -> usize {
        self.evictions += carried.evictions;
        for (s, c) in carried.retired {
            *self.retired.entry(s.key()).or_default() += c;
        }
        let n = carried.conns.len();
        for cc in carried.conns {
            let Some(first) = cc.keys.first() else {
                continue;
            };
            let id = ConnId::of(&first.key);
            self.next_seq += 1;
            let mut conn = Conn {
                seq: self.next_seq,
                syn_client: cc.syn_client,
                first_sender: cc.first_sender,
                transport: cc.transport,
                sni: cc.sni,
                alpn: cc.alpn,
                closed: cc.closed,
                keys: Default::default(),
            };
            for ck in cc.keys {
                if ConnId::of(&ck.key) != id {
                    continue;
                }
                self.ifindexes.insert(ck.key.ifindex);
                conn.keys.insert(
                    ck.key,
                    KeyState {
                        base: ck.base,
                        live: ck.live,
                        // The idle clock starts again with this probe.
                        last_change: Some(now),
                        exported: ck.exported.map(|(s, c)| (s.key(), c)),
                        pinned: ck.pinned.into_iter().map(|(s, c)| (s.key(), c)).collect(),
                    },
                );
            }
            self.conns.insert(id, conn);
        }
        n
    }
}
