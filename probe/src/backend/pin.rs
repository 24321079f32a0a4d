//! Pinning (`--pin DIR`): the classifier's maps and its TCX links live as files in a BPF
//! filesystem, so they outlive the probe. Stopped or killed, the probe leaves the
//! classifier attached and counting; the next probe started with the same directory loads
//! its own programs onto the pinned maps (with the layout recorded in `PIN_META`) and
//! swaps them into the pinned links in one step (`bpf_link_update`), so no packet goes
//! uncounted at either end. `tokenwire-probe detach` removes the files, which detaches the
//! classifier. The flow table's user-space part goes to a state file beside
//! ([`state_file`], `crate::table::CarriedTable`). docs/reliability.md says what carries
//! over and what does not.

use super::ebpf_object::{EbpfError, PINNED_MAPS, chain, hook_name};
use aya::maps::{Array, MapData};
use aya::programs::TcAttachType;
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tokenwire_probe_common::{self as common, PinMeta};

/// Where the flow table's state is kept between probes, one file per pinned generation
/// (tmpfs: like the pins, it lasts until reboot).
const STATE_DIR: &str = "/run/tokenwire-probe";

/// statfs(2)'s f_type of a BPF filesystem.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

const LINK_PREFIX: &str = "link_";

fn pin_error(dir: &Path, reason: impl Into<String>) -> EbpfError {
    EbpfError::Pin {
        dir: dir.display().to_string(),
        reason: reason.into(),
    }
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes the struct it is given; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as u32 == BPF_FS_MAGIC
}

/// Where BPF filesystems are mounted by convention.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Mounts a BPF filesystem at /sys/fs/bpf when `path` is under it and none is mounted
/// there yet (a system without systemd's mount, a container), as bpftool and Cilium do.
fn mount_default_bpffs(path: &Path) -> Result<(), EbpfError> {
    let mount = Path::new(BPFFS_MOUNT);
    if !path.starts_with(mount) || !mount.is_dir() || is_bpffs(mount) {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, kind) = (c("bpf"), c(BPFFS_MOUNT), c("bpf"));
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(pin_error(
            path,
            format!(
                "no BPF filesystem at {BPFFS_MOUNT}, and mounting one failed ({}): mount -t bpf bpf {BPFFS_MOUNT}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    tracing::info!("mounted a BPF filesystem at {BPFFS_MOUNT}");
    Ok(())
}

/// A pin directory, locked against a second probe for as long as this lives.
pub struct PinDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl PinDir {
    /// Opens `path` (creating it) on a BPF filesystem and takes its lock; mounts the
    /// filesystem at /sys/fs/bpf first if `path` is under it and nothing is mounted there.
    pub fn open(path: &Path) -> Result<Self, EbpfError> {
        mount_default_bpffs(path)?;
        std::fs::create_dir_all(path).map_err(|e| pin_error(path, format!("creating it: {e}")))?;
        if !is_bpffs(path) {
            return Err(pin_error(
                path,
                "not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)",
            ));
        }
        let lock = std::fs::File::open(path).map_err(|e| pin_error(path, e.to_string()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(pin_error(
                path,
                "another tokenwire-probe is using it (one probe per pin directory)",
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this directory.
    pub fn error(&self, reason: impl Into<String>) -> EbpfError {
        pin_error(&self.path, reason)
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn link_path(&self, iface: &str, hook: TcAttachType) -> PathBuf {
        self.path.join(link_name(iface, hook))
    }

    /// The links pinned here, by file name.
    pub fn links(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(LINK_PREFIX))
            .collect()
    }

    /// The layout recorded by the probe that first loaded the pinned maps; `None` when
    /// nothing is pinned here yet.
    pub fn meta(&self) -> Result<Option<PinMeta>, EbpfError> {
        let path = self.map_path(common::PIN_META_MAP);
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&path).map_err(|e| pin_error(&self.path, chain(&e)))?;
        let map: Array<MapData, PinMeta> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(|e| {
                pin_error(
                    &self.path,
                    format!("{} is not a tokenwire map: {}", path.display(), chain(&e)),
                )
            })?;
        map.get(&0, 0)
            .map(Some)
            .map_err(|e| pin_error(&self.path, chain(&e)))
    }
}

/// A pinned link's file name.
pub fn link_name(iface: &str, hook: TcAttachType) -> String {
    format!("{LINK_PREFIX}{iface}_{}", hook_name(hook))
}

/// Where the flow table of the pinned maps of `generation` is kept between probes.
pub fn state_file(generation: u64) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{generation:016x}.json"))
}

/// What `tokenwire-probe detach` removed.
#[derive(Debug, Default)]
pub struct Detached {
    pub links: usize,
    pub maps: usize,
    pub state_file: bool,
}

/// Detaches the pinned classifier and removes its maps, state file and directory. Refused
/// while a probe uses the directory (stop it first).
pub fn detach(path: &Path) -> Result<Detached, EbpfError> {
    if !path.exists() {
        return Err(pin_error(path, "nothing is pinned there"));
    }
    let dir = PinDir::open(path)?;
    let generation = dir.meta().ok().flatten().map(|m| m.generation);
    let mut out = Detached::default();
    // Links first: the classifier stops counting before its maps go.
    for name in dir.links() {
        std::fs::remove_file(dir.path.join(&name))
            .map_err(|e| pin_error(path, format!("removing {name}: {e}")))?;
        out.links += 1;
    }
    for name in PINNED_MAPS {
        match std::fs::remove_file(dir.map_path(name)) {
            Ok(()) => out.maps += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_error(path, format!("removing {name}: {e}"))),
        }
    }
    if let Some(g) = generation {
        out.state_file = std::fs::remove_file(state_file(g)).is_ok();
    }
    drop(dir);
    std::fs::remove_dir(path).map_err(|e| {
        pin_error(
            path,
            format!("removing the directory (files of another program in it?): {e}"),
        )
    })?;
    Ok(out)
}
