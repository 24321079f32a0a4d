//! The Unix datagram socket spans arrive on. A Unix socket, not UDP on loopback, so span
//! traffic never shows up in the packets the probe counts.
//!
//! Who may send is who may write the socket file: it is mode 0660, owned by the probe's
//! user and by the group `--spans-group` names (the probe's own group otherwise: root only,
//! when it runs as root). Its directory must be one only its owner (or root) can change, so
//! nobody else can replace the socket: a directory the probe creates is 0755; an existing
//! one writable by others is refused unless it is sticky (/tmp). The kernel then refuses
//! other users' `sendto` with EACCES, and their span senders count the message as dropped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpanSocketError {
    #[error(
        "another process already receives spans on {0} (another probe?); pass --spans PATH or --no-spans"
    )]
    InUse(PathBuf),
    #[error("creating the spans socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the spans socket's directory {dir} can be changed by others (owner uid {uid}, mode {mode:o}), who could replace the socket: remove it, or pass --spans in a directory only you can write"
    )]
    UnsafeDir { dir: PathBuf, uid: u32, mode: u32 },
    #[error("no group {0:?} (--spans-group): see /etc/group, or give a numeric gid")]
    NoGroup(String),
}

/// The gid of a group name (or a number).
pub fn group_id(name: &str) -> Result<u32, SpanSocketError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name).map_err(|_| SpanSocketError::NoGroup(name.into()))?;
    // SAFETY: a NUL-terminated name; getgrnam's static result is read at once, at start-up,
    // before any thread of ours could call it too.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(SpanSocketError::NoGroup(name.into()));
    }
    // SAFETY: non-null, points at a valid group entry until the next getgr* call.
    Ok(unsafe { (*gr).gr_gid })
}

/// Creates `dir` (0755) if missing; refuses one that users other than its owner (or root)
/// can change, unless sticky.
fn safe_dir(dir: &Path) -> Result<(), SpanSocketError> {
    let io = |source| SpanSocketError::Io {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o755)
            .create(dir)
            .map_err(io)?;
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    // SAFETY: geteuid cannot fail and has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    let others_can_write = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if (uid != me && uid != 0) || others_can_write {
        return Err(SpanSocketError::UnsafeDir {
            dir: dir.to_owned(),
            uid,
            mode,
        });
    }
    Ok(())
}

/// The bound socket; the file is removed on drop.
pub struct SpanSocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl SpanSocket {
    /// Binds `path` for the probe's user and `group` (gid; the probe's own group when
    /// `None`), creating its directory and replacing a stale socket file (one nobody
    /// receives on).
    pub fn bind(path: &Path, group: Option<u32>) -> Result<Self, SpanSocketError> {
        let io = |source| SpanSocketError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        safe_dir(dir)?;
        if path.exists() {
            let probe = std::os::unix::net::UnixDatagram::unbound().map_err(io)?;
            if probe.connect(path).is_ok() {
                return Err(SpanSocketError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        // The umask leaves it at most 0755 (no one else can write) until it is 0660.
        let socket = tokio::net::UnixDatagram::bind(path).map_err(io)?;
        if group.is_some() {
            std::os::unix::fs::chown(path, None, group).map_err(io)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram into `buf`; its length. A datagram longer than `buf` is cut to
    /// it (give one byte more than the limit to tell).
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.recv(buf).await
    }
}

impl Drop for SpanSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
