//! QUIC's UDP sockets without ECN reports, as quic-go runs on macOS.
//!
//! quinn marks every packet it sends ECN-capable (ECT(0)) and asks the kernel for the ECN
//! bits of every packet it receives (`IP_RECVTOS`, `IPV6_RECVTCLASS`). While it sees marked
//! packets, each ACK frame it sends carries three ECN counters (3 to 12 bytes; about 4
//! measured on a long answer); a peer whose ACKs carry none makes it stop marking. quic-go,
//! the reference's QUIC stack, does not use ECN on macOS, so neither side's ACKs carried the
//! counters there. quinn 0.11 has no setting for it; the socket option is the switch: once
//! quinn has set the socket up, [`ignore_received_ecn`] turns the reports off again, quinn
//! reads no ECN bits, its ACKs carry no counters, and the peer stops marking after its
//! first ACK. docs/reference.md has the measured effect.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// A UDP socket bound to `addr` for a QUIC endpoint, and a second handle on the same
/// socket for [`ignore_received_ecn`] once the endpoint has taken the first.
pub fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, UdpSocket)> {
    let socket = UdpSocket::bind(addr)?;
    let handle = socket.try_clone()?;
    Ok((socket, handle))
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
