//! Transport classification from a flow's first payload bytes: TLS (with SNI and ALPN from
//! the ClientHello), plaintext HTTP/1.x, QUIC long headers. Pure functions over bytes:
//! whatever the input, they return an answer and never panic.

/// What a TCP flow's first payload says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpPayload {
    /// A TLS handshake record; SNI and ALPN when it is a readable ClientHello.
    Tls {
        sni: Option<String>,
        alpn: Vec<String>,
    },
    /// An HTTP/1.x request or response line.
    Http,
    Other,
}

const HTTP_STARTS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"HTTP/1.",
];

pub fn classify_tcp(payload: &[u8]) -> TcpPayload {
    // TLS record: content type 22 (handshake), version 3.x.
    if payload.len() >= 3 && payload[0] == 22 && payload[1] == 3 && payload[2] <= 4 {
        let (sni, alpn) = client_hello(payload).unwrap_or_default();
        return TcpPayload::Tls { sni, alpn };
    }
    if HTTP_STARTS.iter().any(|s| payload.starts_with(s)) {
        return TcpPayload::Http;
    }
    TcpPayload::Other
}

/// A QUIC long-header packet of version 1 (RFC 9000) or 2 (RFC 9369).
pub fn is_quic_long_header(payload: &[u8]) -> bool {
    if payload.len() < 7 || payload[0] & 0xc0 != 0xc0 {
        return false;
    }
    let version = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    matches!(version, 0x0000_0001 | 0x6b33_43cf)
}

/// A cursor that fails (returns `None`) instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// SNI and ALPN of a ClientHello in the first TLS record (RFC 8446 §4.1.2). Reads what the
/// captured bytes hold: a ClientHello cut short yields what came before the cut.
fn client_hello(record: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let mut r = Reader(record);
    r.take(5)?; // record header
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.u24()?;
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut exts = Reader(r.vec16().unwrap_or(r.0));
    let (mut sni, mut alpn) = (None, Vec::new());
    while let (Some(kind), Some(body)) = (exts.u16(), exts.vec16()) {
        let mut b = Reader(body);
        match kind {
            0 => {
                // server_name_list: type 0 = host_name
                let mut list = Reader(b.vec16().unwrap_or_default());
                while let (Some(t), Some(name)) = (list.u8(), list.vec16()) {
                    if t == 0 {
                        sni = std::str::from_utf8(name).ok().map(str::to_owned);
                    }
                }
            }
            16 => {
                let mut list = Reader(b.vec16().unwrap_or_default());
                while let Some(p) = list.vec8() {
                    alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some((sni, alpn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with SNI `localhost` and ALPN h3 + http/1.1, built by hand.
    fn hello() -> Vec<u8> {
        let mut ext = Vec::new();
        let name = b"localhost";
        let mut sni = vec![0u8];
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name);
        let mut sni_ext = ((sni.len()) as u16).to_be_bytes().to_vec();
        sni_ext.extend(&sni);
        ext.extend(0u16.to_be_bytes());
        ext.extend((sni_ext.len() as u16).to_be_bytes());
        ext.extend(&sni_ext);
        let mut protos = Vec::new();
        for p in [&b"h3"[..], b"http/1.1"] {
            protos.push(p.len() as u8);
            protos.extend(p);
        }
        let mut alpn = (protos.len() as u16).to_be_bytes().to_vec();
        alpn.extend(&protos);
        ext.extend(16u16.to_be_bytes());
        ext.extend((alpn.len() as u16).to_be_bytes());
        ext.extend(&alpn);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // compression
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(&ext);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(&hs);
        rec
    }

    #[test]
    fn reads_sni_and_alpn() {
        assert_eq!(
            classify_tcp(&hello()),
            TcpPayload::Tls {
                sni: Some("localhost".into()),
                alpn: vec!["h3".into(), "http/1.1".into()]
            }
        );
    }

    #[test]
    fn any_truncation_is_still_tls_and_never_panics() {
        let h = hello();
        for n in 0..h.len() {
            let c = classify_tcp(&h[..n]);
            if n >= 3 {
                assert!(matches!(c, TcpPayload::Tls { .. }), "{n}");
            }
        }
        // Garbage lengths everywhere.
        for seed in 0..2000u32 {
            let mut g = h.clone();
            let i = (seed as usize * 7919) % g.len();
            g[i] = (seed % 256) as u8;
            let _ = classify_tcp(&g);
        }
    }

    #[test]
    fn http_and_quic() {
        assert_eq!(classify_tcp(b"POST /chat HTTP/1.1\r\n"), TcpPayload::Http);
        assert_eq!(classify_tcp(b"HTTP/1.1 200 OK\r\n"), TcpPayload::Http);
        assert_eq!(classify_tcp(b"\x00\x01binary"), TcpPayload::Other);
        assert!(is_quic_long_header(&[0xc3, 0, 0, 0, 1, 8, 0]));
        assert!(is_quic_long_header(&[0xd0, 0x6b, 0x33, 0x43, 0xcf, 8, 0]));
        assert!(!is_quic_long_header(&[0x43, 0, 0, 0, 1, 8, 0])); // short header
        assert!(!is_quic_long_header(&[0xc3, 0xff, 0, 0, 0x1d, 8, 0])); // draft version
        assert!(!is_quic_long_header(&[0xc3]));
    }
}
