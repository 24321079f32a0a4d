//! The Unix datagram socket spans arrive on. A Unix socket, not UDP on loopback, so span
//! traffic never shows up in the packets the probe counts. The socket file is created
//! world-writable (servers often run as another user than the probe); any local user can
//! therefore send spans, which can only skew attribution, never counting.

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
}

/// The bound socket; the file is removed on drop.
pub struct SpanSocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl SpanSocket {
    /// Binds `path`, creating its directory and replacing a stale socket file (one nobody
    /// receives on).
    pub fn bind(path: &Path) -> Result<Self, SpanSocketError> {
        let io = |source| SpanSocketError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if path.exists() {
            let probe = std::os::unix::net::UnixDatagram::unbound().map_err(io)?;
            if probe.connect(path).is_ok() {
                return Err(SpanSocketError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let socket = tokio::net::UnixDatagram::bind(path).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
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
