//! Reading pcapng files (the format of tshark and Wireshark): section headers in either
//! byte order, interface descriptions (link type per interface), enhanced, simple and
//! obsolete packet blocks; other blocks are skipped.

use super::common::{CaptureFileError, CapturedPacket, read_full, u16_in, u32_in};
use std::io::Read;

/// Largest block accepted, whatever the file claims.
const MAX_BLOCK: u32 = 1 << 20;

/// A timestamp's unit: 10^-n or 2^-n seconds (if_tsresol; microseconds by default).
#[derive(Debug, Clone, Copy)]
enum TsUnit {
    Decimal(u32),
    Binary(u32),
}

impl TsUnit {
    /// Reads if_tsresol (option 9) from an interface description's options.
    fn from_options(opts: &[u8], big_endian: bool) -> Self {
        let mut at = 0;
        while at + 4 <= opts.len() {
            let code = u16_in(&opts[at..], big_endian);
            let len = usize::from(u16_in(&opts[at + 2..], big_endian));
            if code == 0 {
                break;
            }
            if code == 9 && len >= 1 && at + 5 <= opts.len() {
                let v = opts[at + 4];
                return if v & 0x80 == 0 {
                    TsUnit::Decimal(u32::from(v))
                } else {
                    TsUnit::Binary(u32::from(v & 0x7f))
                };
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        TsUnit::Decimal(6)
    }

    /// Nanoseconds of `ticks` units; `None` when it does not fit.
    fn to_ns(self, ticks: u64) -> Option<u64> {
        match self {
            TsUnit::Decimal(n) if n <= 9 => ticks.checked_mul(10u64.pow(9 - n)),
            TsUnit::Decimal(n) => {
                let div = 10u128.checked_pow(n - 9)?;
                u64::try_from(u128::from(ticks) / div).ok()
            }
            TsUnit::Binary(n) => {
                u64::try_from((u128::from(ticks) * 1_000_000_000) >> n.min(127)).ok()
            }
        }
    }
}

pub struct PcapngReader<R> {
    r: std::io::Chain<std::io::Cursor<[u8; 4]>, R>,
    big_endian: bool,
    /// (linktype, snaplen, timestamp unit) per interface of the current section.
    ifaces: Vec<(u32, u32, TsUnit)>,
    packets: u64,
    offset: u64,
}

impl<R: Read> PcapngReader<R> {
    pub(crate) fn new(
        r: std::io::Chain<std::io::Cursor<[u8; 4]>, R>,
    ) -> Result<Self, CaptureFileError> {
        let mut s = Self {
            r,
            big_endian: false,
            ifaces: Vec::new(),
            packets: 0,
            offset: 0,
        };
        // The first block must be a section header.
        match s.block()? {
            Some((0x0a0d_0d0a, _)) => Ok(s),
            _ => Err(CaptureFileError::BadRecord {
                index: 0,
                offset: 0,
                reason: "pcapng file without a section header".into(),
            }),
        }
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    fn u32(&self, b: &[u8]) -> u32 {
        u32_in(b, self.big_endian)
    }

    fn err(&self, reason: impl Into<String>) -> CaptureFileError {
        CaptureFileError::BadRecord {
            index: self.packets,
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Reads one block: (type, body). Handles section headers (byte order, interfaces)
    /// itself. `None` at a clean end of file.
    fn block(&mut self) -> Result<Option<(u32, Vec<u8>)>, CaptureFileError> {
        let mut head = [0u8; 8];
        let n = read_full(&mut self.r, &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        if n < 8 {
            return Err(self.err(format!("file ends inside a block header ({n} of 8 bytes)")));
        }
        let raw_type = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if raw_type == 0x0a0d_0d0a {
            // Section header: its byte-order magic follows the length.
            let mut bom = [0u8; 4];
            if read_full(&mut self.r, &mut bom)? < 4 {
                return Err(self.err("file ends inside a section header"));
            }
            self.big_endian = match u32::from_le_bytes(bom) {
                0x1a2b_3c4d => false,
                0x4d3c_2b1a => true,
                _ => return Err(self.err("section header with an unknown byte-order magic")),
            };
            self.ifaces.clear();
            let len = self.u32(&head[4..]);
            if !(28..=MAX_BLOCK).contains(&len) || !len.is_multiple_of(4) {
                return Err(self.err(format!("section header length {len} is invalid")));
            }
            let mut rest = vec![0u8; len as usize - 12];
            if read_full(&mut self.r, &mut rest)? < rest.len() {
                return Err(self.err("file ends inside a section header"));
            }
            self.offset += u64::from(len);
            return Ok(Some((raw_type, rest)));
        }
        let btype = self.u32(&head[..4]);
        let len = self.u32(&head[4..]);
        if !(12..=MAX_BLOCK).contains(&len) || !len.is_multiple_of(4) {
            return Err(self.err(format!("block length {len} is invalid")));
        }
        let mut body = vec![0u8; len as usize - 8];
        let got = read_full(&mut self.r, &mut body)?;
        if got < body.len() {
            return Err(self.err(format!(
                "file ends inside a block ({got} of {} bytes)",
                body.len()
            )));
        }
        let trailer = self.u32(&body[body.len() - 4..]);
        if trailer != len {
            return Err(self.err(format!(
                "block length {len} and trailing length {trailer} differ"
            )));
        }
        body.truncate(body.len() - 4);
        self.offset += u64::from(len);
        Ok(Some((btype, body)))
    }

    pub fn next_packet(&mut self) -> Result<Option<CapturedPacket>, CaptureFileError> {
        loop {
            let start = self.offset;
            let Some((btype, body)) = self.block()? else {
                return Ok(None);
            };
            let short = |s: &Self| CaptureFileError::BadRecord {
                index: s.packets,
                offset: start,
                reason: "packet block too short".into(),
            };
            // Enhanced and obsolete packet blocks carry a 64-bit timestamp at bytes 4..12.
            let ticks = (body.len() >= 12)
                .then(|| (u64::from(self.u32(&body[4..])) << 32) | u64::from(self.u32(&body[8..])));
            let (iface, caplen, orig, data_at) = match btype {
                1 => {
                    // Interface description: link type, reserved, snaplen.
                    if body.len() < 8 {
                        return Err(short(self));
                    }
                    let link = u32::from(u16_in(&body, self.big_endian));
                    let snap = self.u32(&body[4..]);
                    let unit = TsUnit::from_options(&body[8..], self.big_endian);
                    self.ifaces.push((link, snap, unit));
                    continue;
                }
                6 => {
                    if body.len() < 20 {
                        return Err(short(self));
                    }
                    (
                        self.u32(&body[0..]),
                        self.u32(&body[12..]),
                        self.u32(&body[16..]),
                        20,
                    )
                }
                3 => {
                    if body.len() < 4 {
                        return Err(short(self));
                    }
                    let orig = self.u32(&body[0..]);
                    let snap = self.ifaces.first().map_or(u32::MAX, |i| i.1);
                    let snap = if snap == 0 { u32::MAX } else { snap };
                    (0, orig.min(snap).min(body.len() as u32 - 4), orig, 4)
                }
                2 => {
                    if body.len() < 20 {
                        return Err(short(self));
                    }
                    let iface = u32::from(u16_in(&body, self.big_endian));
                    (iface, self.u32(&body[12..]), self.u32(&body[16..]), 20)
                }
                _ => continue, // statistics, name resolution, custom blocks...
            };
            let Some(&(linktype, _, unit)) = self.ifaces.get(iface as usize) else {
                return Err(CaptureFileError::BadRecord {
                    index: self.packets,
                    offset: start,
                    reason: format!("packet for undeclared interface {iface}"),
                });
            };
            let end = data_at + caplen as usize;
            if end > body.len() || caplen > orig {
                return Err(CaptureFileError::BadRecord {
                    index: self.packets,
                    offset: start,
                    reason: format!(
                        "captured length {caplen} does not fit the block or exceeds the original {orig}"
                    ),
                });
            }
            self.packets += 1;
            return Ok(Some(CapturedPacket {
                linktype,
                iface,
                orig_len: orig,
                data: body[data_at..end].to_vec(),
                ts_ns: if btype == 3 {
                    None
                } else {
                    ticks.and_then(|t| unit.to_ns(t))
                },
            }));
        }
    }
}

#[cfg(test)]
pub mod build {
    //! pcapng files built by hand, for tests.

    fn block(btype: u32, body: &[u8]) -> Vec<u8> {
        let mut body = body.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let len = (body.len() + 12) as u32;
        let mut b = btype.to_le_bytes().to_vec();
        b.extend(len.to_le_bytes());
        b.extend(&body);
        b.extend(len.to_le_bytes());
        b
    }

    /// A little-endian pcapng with one interface of `linktype` and enhanced packet blocks.
    pub fn file(linktype: u16, packets: &[&[u8]]) -> Vec<u8> {
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend([1, 0, 0, 0]); // version 1.0
        shb.extend((-1i64).to_le_bytes()); // section length unknown
        let mut f = block(0x0a0d_0d0a, &shb);
        let mut idb = linktype.to_le_bytes().to_vec();
        idb.extend([0, 0]);
        idb.extend(65535u32.to_le_bytes());
        f.extend(block(1, &idb));
        for p in packets {
            let mut epb = 0u32.to_le_bytes().to_vec();
            epb.extend([0u8; 8]);
            epb.extend((p.len() as u32).to_le_bytes());
            epb.extend((p.len() as u32).to_le_bytes());
            epb.extend(*p);
            f.extend(block(6, &epb));
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::TsUnit;

    #[test]
    fn timestamp_units_from_if_tsresol() {
        // No option: microseconds. Option 9 = 9: nanoseconds; 0x8a: 2^-10 s.
        assert_eq!(TsUnit::from_options(&[], false).to_ns(5), Some(5_000));
        let nano = [9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(TsUnit::from_options(&nano, false).to_ns(5), Some(5));
        let bin = [9, 0, 1, 0, 0x8a, 0, 0, 0];
        assert_eq!(
            TsUnit::from_options(&bin, false).to_ns(1024),
            Some(1_000_000_000)
        );
        assert_eq!(TsUnit::Decimal(12).to_ns(5_000), Some(5));
        assert_eq!(TsUnit::Decimal(0).to_ns(u64::MAX), None);
    }
}
