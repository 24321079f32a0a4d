//! The kernel's flow counters as user space reads them: the per-CPU map keyed by
//! fingerprint (named through the fingerprint-to-key map, cached here) and the small map of
//! collided keys by full key (probe-common's `Fingerprint` says why two maps).

use super::ebpf::{EbpfError, chain};
use crate::flow::{Counters, PacketKey};
use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
use tokenwire_probe_common as common;

pub struct FlowMaps {
    flows: PerCpuHashMap<MapData, u64, common::FlowCounters>,
    keys: HashMap<MapData, u64, common::FlowKey>,
    collided: PerCpuHashMap<MapData, common::FlowKey, common::FlowCounters>,
    /// The fingerprint keys the object was loaded with.
    fingerprint_keys: [u64; 8],
    /// Fingerprint hashes already named (a key never changes its hash).
    known: std::collections::HashMap<u64, PacketKey>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        map,
        reason: chain(&e),
    }
}

/// A key's counters added up over the CPUs, and the TCP flags any of them saw.
fn sum_cpus(per_cpu: &PerCpuValues<common::FlowCounters>) -> (Counters, u8) {
    let mut total = Counters::default();
    let mut flags = 0u8;
    for v in per_cpu.iter() {
        total += Counters {
            packets: v.packets,
            ip_bytes: v.ip_bytes,
            link_bytes: v.link_bytes,
        };
        flags |= v.tcp_flags;
    }
    (total, flags)
}

impl FlowMaps {
    /// Takes the maps out of a loaded object given `fingerprint_keys`.
    pub fn take(ebpf: &mut aya::Ebpf, fingerprint_keys: [u64; 8]) -> Result<Self, EbpfError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(EbpfError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        Ok(Self {
            flows: PerCpuHashMap::try_from(take(common::FLOWS_MAP)?)
                .map_err(map_err(common::FLOWS_MAP))?,
            keys: HashMap::try_from(take(common::FLOW_KEYS_MAP)?)
                .map_err(map_err(common::FLOW_KEYS_MAP))?,
            collided: PerCpuHashMap::try_from(take(common::COLLIDED_MAP)?)
                .map_err(map_err(common::COLLIDED_MAP))?,
            fingerprint_keys,
            known: std::collections::HashMap::new(),
        })
    }

    /// The key that holds `hash`, from the cache or the kernel's map.
    fn name(&mut self, hash: u64) -> Option<PacketKey> {
        if let Some(k) = self.known.get(&hash) {
            return Some(*k);
        }
        let k = PacketKey::from_raw(&self.keys.get(&hash, 0).ok()?)?;
        self.known.insert(hash, k);
        Some(k)
    }

    /// Every key's counters (summed over CPUs) and TCP flags; how many keys.
    pub fn read_all(
        &mut self,
        mut each: impl FnMut(PacketKey, Counters, u8),
    ) -> Result<u64, EbpfError> {
        let mut entries = Vec::new();
        for entry in self.flows.iter() {
            let (hash, per_cpu) = entry.map_err(map_err(common::FLOWS_MAP))?;
            entries.push((hash, sum_cpus(&per_cpu)));
        }
        let mut n = 0;
        for (hash, (total, flags)) in entries {
            // A key deleted between the two reads has no name: its totals are the table's.
            if let Some(key) = self.name(hash) {
                each(key, total, flags);
                n += 1;
            }
        }
        for entry in self.collided.iter() {
            let (k, per_cpu) = entry.map_err(map_err(common::COLLIDED_MAP))?;
            if let Some(key) = PacketKey::from_raw(&k) {
                let (total, flags) = sum_cpus(&per_cpu);
                each(key, total, flags);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Where `key` is counted: its fingerprint hash when it holds it, else `None`
    /// (collided, or not in the kernel).
    fn holder(&mut self, key: &PacketKey) -> Option<u64> {
        let fp = common::fingerprint(&key.to_raw(), &self.fingerprint_keys);
        (self.name(fp.hash) == Some(*key)).then_some(fp.hash)
    }

    /// One key's counters and flags now; `None` once it left the kernel's maps.
    pub fn get(&mut self, key: &PacketKey) -> Option<(Counters, u8)> {
        let per_cpu = match self.holder(key) {
            Some(hash) => self.flows.get(&hash, 0).ok()?,
            None => self.collided.get(&key.to_raw(), 0).ok()?,
        };
        Some(sum_cpus(&per_cpu))
    }

    /// Deletes a key from the kernel's maps; whether it was there.
    pub fn remove(&mut self, key: &PacketKey) -> bool {
        match self.holder(key) {
            Some(hash) => {
                let gone = self.flows.remove(&hash).is_ok();
                let _ = self.keys.remove(&hash);
                self.known.remove(&hash);
                gone
            }
            None => self.collided.remove(&key.to_raw()).is_ok(),
        }
    }

    /// Deletes every key (test runs start from empty maps).
    pub fn clear(&mut self) {
        let hashes: Vec<u64> = self.flows.keys().filter_map(Result::ok).collect();
        for h in hashes {
            let _ = self.flows.remove(&h);
        }
        let hashes: Vec<u64> = self.keys.keys().filter_map(Result::ok).collect();
        for h in hashes {
            let _ = self.keys.remove(&h);
        }
        let keys: Vec<common::FlowKey> = self.collided.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.collided.remove(&k);
        }
        self.known.clear();
    }
}
