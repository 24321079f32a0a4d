//! QUIC's UDP sockets: bound with receive and send buffers sized for many connections, and
//! optionally without ECN reports, as quic-go runs on macOS.
//!
//! **Buffers.** Every QUIC connection of an endpoint arrives on its one UDP socket. A
//! thousand clients starting at once send a thousand 1,200-byte Initial packets in a burst;
//! with Linux's default 208 KiB receive buffer most are dropped (the kernel counts them as
//! `RcvbufErrors` in /proc/net/snmp), their handshakes wait for retransmission timeouts and
//! the clients give up. quinn does not size the buffers, so [`bind`] does: it asks for
//! `buffer` bytes and, when the kernel caps it at `net.core.rmem_max`, forces it where the
//! process may (root or CAP_NET_ADMIN) and otherwise reports the size it got.
//!
//! **ECN.** quinn marks every packet it sends ECN-capable (ECT(0)) and asks the kernel for
//! the ECN bits of every packet it receives (`IP_RECVTOS`, `IPV6_RECVTCLASS`). While it sees
//! marked packets, each ACK frame it sends carries three ECN counters (3 to 12 bytes; about 4
//! measured on a long answer); a peer whose ACKs carry none makes it stop marking. quic-go,
//! the reference's QUIC stack, does not use ECN on macOS, so neither side's ACKs carried the
//! counters there. quinn 0.11 has no setting for it; the socket option is the switch: once
//! quinn has set the socket up, [`ignore_received_ecn`] turns the reports off again, quinn
//! reads no ECN bits, its ACKs carry no counters, and the peer stops marking after its
//! first ACK. docs/reference.md has the measured effect.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// The receive and send buffer each QUIC socket asks for by default: room for a burst of
/// several thousand Initial packets.
pub const DEFAULT_BUFFER: usize = 8 << 20;

/// A bound QUIC socket.
pub struct Bound {
    /// For the endpoint.
    pub socket: UdpSocket,
    /// A second handle on the same socket, for [`ignore_received_ecn`] once the endpoint
    /// has taken the first.
    pub handle: UdpSocket,
    /// The buffer sizes the kernel granted (Linux reports twice the bytes asked for: half
    /// is its bookkeeping).
    pub recv_buffer: usize,
    pub send_buffer: usize,
}

/// A UDP socket bound to `addr` for a QUIC endpoint, its receive and send buffers sized to
/// `buffer` bytes or as close as the kernel allows (module comment).
pub fn bind(addr: SocketAddr, buffer: usize) -> io::Result<Bound> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack, as std and quinn bind `[::]`.
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into())?;
    size_buffers(&sock, buffer);
    let (recv_buffer, send_buffer) = (sock.recv_buffer_size()?, sock.send_buffer_size()?);
    let socket = UdpSocket::from(sock);
    let handle = socket.try_clone()?;
    Ok(Bound {
        socket,
        handle,
        recv_buffer,
        send_buffer,
    })
}

/// Asks for `bytes` of receive and send buffer; past `net.core.{r,w}mem_max`, forces them
/// where the process may. A buffer that stays smaller is reported by the caller.
fn size_buffers(sock: &socket2::Socket, bytes: usize) {
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let force = |opt: libc::c_int, got: io::Result<usize>| {
            // Linux reports double what was granted.
            if got.is_ok_and(|g| g / 2 < bytes) {
                let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
                // SAFETY: a valid socket, an int option and its size.
                unsafe {
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&val as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
        };
        force(libc::SO_RCVBUFFORCE, sock.recv_buffer_size());
        force(libc::SO_SNDBUFFORCE, sock.send_buffer_size());
    }
}

/// Stops the kernel from reporting received packets' ECN bits on `socket` (both families
/// on an IPv6 socket, which also receives IPv4-mapped packets). Call it after quinn has
/// wrapped the socket: quinn turns the reports on when it does.
pub fn ignore_received_ecn(socket: &UdpSocket) -> io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    match socket.local_addr()? {
        SocketAddr::V4(_) => sock.set_recv_tos_v4(false),
        SocketAddr::V6(_) => {
            sock.set_recv_tclass_v6(false)?;
            // IPv4-mapped packets report through the IPv4 option; a v6-only socket may
            // refuse it, and then has nothing to report through it either.
            let _ = sock.set_recv_tos_v4(false);
            Ok(())
        }
    }
}
