//! The kernel's flow counters as user space reads them: the per-CPU slot array (each
//! owned slot named through the slot-to-key map) and the small map of collided keys by
//! full key. probe-common's `Fingerprint` says why a slot array.

use super::ebpf_object::{EbpfError, Layout, chain};
use crate::flow::{Counters, PacketKey};
use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use std::os::fd::{AsFd, OwnedFd};
use tokenwire_probe_common as common;

pub struct FlowMaps {
    slots: PerCpuArray<MapData, common::FlowCounters>,
    keys: HashMap<MapData, u32, common::FlowKey>,
    /// The keys map again, for batch reads ([`super::map_batch`]); `None` once the kernel
    /// refused them (aya's iterator reads it then).
    keys_batch: Option<OwnedFd>,
    collided: PerCpuHashMap<MapData, common::FlowKey, common::FlowCounters>,
    layout: Layout,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        map,
        reason: chain(&e),
    }
}

/// A key's counters added up over the CPUs whose value carries `tag` (every CPU for a
/// collided key's own entry: `None`), and the TCP flags any of them saw.
fn sum_cpus(per_cpu: &PerCpuValues<common::FlowCounters>, tag: Option<u64>) -> (Counters, u8) {
    let mut total = Counters::default();
    let mut flags = 0u8;
    for v in per_cpu.iter().filter(|v| tag.is_none_or(|t| v.tag == t)) {
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
    /// Takes the maps out of an object loaded with `layout`.
    pub fn take(ebpf: &mut aya::Ebpf, layout: Layout) -> Result<Self, EbpfError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(EbpfError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        let keys = take(common::FLOW_KEYS_MAP)?;
        let keys_batch = match &keys {
            Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned().ok(),
            _ => None,
        };
        Ok(Self {
            slots: PerCpuArray::try_from(take(common::SLOTS_MAP)?)
                .map_err(map_err(common::SLOTS_MAP))?,
            keys: HashMap::try_from(keys).map_err(map_err(common::FLOW_KEYS_MAP))?,
            keys_batch,
            collided: PerCpuHashMap::try_from(take(common::COLLIDED_MAP)?)
                .map_err(map_err(common::COLLIDED_MAP))?,
            layout,
        })
    }

    fn fingerprint(&self, key: &common::FlowKey) -> (u32, u64) {
        let fp = common::fingerprint(key, &self.layout.keys);
        (common::slot(fp.hash, self.layout.slot_shift), fp.tag)
    }

    /// One owned slot's counters for the key whose tag is `tag`.
    fn read_slot(&self, slot: u32, tag: u64) -> Option<(Counters, u8)> {
        let per_cpu = self.slots.get(&slot, 0).ok()?;
        Some(sum_cpus(&per_cpu, Some(tag)))
    }

    /// Every key's counters (summed over CPUs) and TCP flags; how many keys.
    pub fn read_all(
        &mut self,
        mut each: impl FnMut(PacketKey, Counters, u8),
    ) -> Result<u64, EbpfError> {
        let owned = self.owned_keys()?;
        let mut n = 0;
        for (slot, raw) in owned {
            let (Some(key), Some((total, flags))) = (
                PacketKey::from_raw(&raw),
                self.read_slot(slot, self.fingerprint(&raw).1),
            ) else {
                continue;
            };
            each(key, total, flags);
            n += 1;
        }
        for entry in self.collided.iter() {
            let (k, per_cpu) = entry.map_err(map_err(common::COLLIDED_MAP))?;
            if let Some(key) = PacketKey::from_raw(&k) {
                let (total, flags) = sum_cpus(&per_cpu, None);
                each(key, total, flags);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether the keys are read in batches (the kernel took the first batch read, or none
    /// was tried yet).
    pub fn reads_in_batches(&self) -> bool {
        self.keys_batch.is_some()
    }

    /// Every (slot, key that owns it): in batches where the kernel allows, else one key at
    /// a time.
    fn owned_keys(&mut self) -> Result<Vec<(u32, common::FlowKey)>, EbpfError> {
        if let Some(fd) = &self.keys_batch {
            match super::map_batch::lookup_all::<u32, common::FlowKey>(fd.as_fd()) {
                Ok(all) => return Ok(all),
                Err(e) => {
                    tracing::debug!(error = %e, "batch reads of the flow keys refused; reading them one by one");
                    self.keys_batch = None;
                }
            }
        }
        let mut owned = Vec::new();
        for entry in self.keys.iter() {
            owned.push(entry.map_err(map_err(common::FLOW_KEYS_MAP))?);
        }
        Ok(owned)
    }

    /// The slot `key` owns and its tag, if it owns one (else it is collided, or not in
    /// the kernel).
    fn owned_slot(&self, key: &common::FlowKey) -> Option<(u32, u64)> {
        let (slot, tag) = self.fingerprint(key);
        (self.keys.get(&slot, 0).ok()? == *key).then_some((slot, tag))
    }

    /// One key's counters and flags now; `None` once it left the kernel's maps.
    pub fn get(&mut self, key: &PacketKey) -> Option<(Counters, u8)> {
        let raw = key.to_raw();
        match self.owned_slot(&raw) {
            Some((slot, tag)) => self.read_slot(slot, tag),
            None => {
                let per_cpu = self.collided.get(&raw, 0).ok()?;
                Some(sum_cpus(&per_cpu, None))
            }
        }
    }

    /// Deletes a key from the kernel's maps; whether it was there. An owned slot is zeroed
    /// on every CPU before it is given up, so its next owner starts from nothing.
    pub fn remove(&mut self, key: &PacketKey) -> bool {
        let raw = key.to_raw();
        match self.owned_slot(&raw) {
            Some((slot, _)) => {
                // Zeroed first, owner released second: a key that takes the slot next
                // finds no tag of this one's on any CPU. (Were the zeroing to fail, the
                // next owner would find this key's tag on some CPU and count there in
                // COLLIDED instead: slower, never merged.)
                let cpus = aya::util::nr_cpus().unwrap_or(0);
                if let Ok(zero) =
                    PerCpuValues::try_from(vec![common::FlowCounters::default(); cpus])
                {
                    let _ = self.slots.set(slot, zero, 0);
                }
                self.keys.remove(&slot).is_ok()
            }
            None => self.collided.remove(&raw).is_ok(),
        }
    }

    /// Deletes every key (test runs start from empty maps).
    pub fn clear(&mut self) {
        let mut keys = Vec::new();
        let _ = self.read_all(|k, _, _| keys.push(k));
        for k in keys {
            self.remove(&k);
        }
    }
}
