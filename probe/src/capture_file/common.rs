//! What both capture-file readers share: the error type, the packet they yield, and
//! reading integers in the file's byte order.

use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a capture file: magic {0:#010x} is neither pcap nor pcapng")]
    BadMagic(u32),
    #[error("file ends inside the {0}-byte global header")]
    ShortHeader(usize),
    #[error("packet {index} at byte {offset}: {reason}")]
    BadRecord {
        index: u64,
        offset: u64,
        reason: String,
    },
}

/// One packet of a capture file.
#[derive(Debug, Clone)]
pub struct CapturedPacket {
    /// pcap LINKTYPE_ of the packet's interface.
    pub linktype: u32,
    /// Interface number in the file (0 for classic pcap).
    pub iface: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
    /// Capture time, Unix nanoseconds (`None` where the format has none: pcapng simple
    /// packet blocks).
    pub ts_ns: Option<u64>,
}

/// The first four bytes of `b` in the file's byte order (callers check the length).
pub(super) fn u32_in(b: &[u8], big_endian: bool) -> u32 {
    let b = [b[0], b[1], b[2], b[3]];
    if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// The first two bytes of `b` in the file's byte order.
pub(super) fn u16_in(b: &[u8], big_endian: bool) -> u16 {
    let b = [b[0], b[1]];
    if big_endian {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    }
}

/// Reads until `buf` is full or the input ends; returns how much it read.
pub(super) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
