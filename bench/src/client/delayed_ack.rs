//! TCP delayed ACKs for a client that only reads ([`tokenwire_servers::tuning::Knob::DelayedAcks`]).
//!
//! Linux acknowledges a small segment that carries PSH as soon as the application has read
//! it and emptied the receive queue, unless the socket is in "ping-pong" mode, which the
//! kernel enters only when the application also sends. A streaming client never sends, so
//! every token gets its own ACK. Clearing `TCP_QUICKACK` puts the socket into ping-pong mode;
//! the kernel leaves it again each time its delayed-ACK timer fires, so the client clears
//! it again after every read. The kernel then acknowledges when a second small segment
//! arrives, or when the timer (at least 40 ms) fires. No token waits for it: ACKs carry no
//! data, and the servers send with `TCP_NODELAY`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that clears `TCP_QUICKACK` after every read that returned data.
pub struct DelayedAcks(pub TcpStream);

impl DelayedAcks {
    fn quickack_off(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let off: libc::c_int = 0;
            // SAFETY: a valid socket, an int option and its size. A refusal leaves the
            // kernel's default, which only costs ACKs.
            unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&off as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

impl AsyncRead for DelayedAcks {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.quickack_off();
        }
        r
    }
}

impl AsyncWrite for DelayedAcks {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
