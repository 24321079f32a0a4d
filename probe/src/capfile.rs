//! Capture files of either format: classic pcap (tcpdump -w) and pcapng (tshark,
//! Wireshark), told apart by their first bytes. Errors name the packet and byte offset
//! where a file broke.

use crate::pcapfile::{PcapError, PcapReader};
use std::io::Read;

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

/// The reader after the four magic bytes were read and put back in front.
type Sniffed<R> = std::io::Chain<std::io::Cursor<[u8; 4]>, R>;

pub enum CaptureFile<R> {
    Pcap(PcapReader<Sniffed<R>>),
    Pcapng(crate::pcapng::PcapngReader<R>),
}

impl<R: Read> CaptureFile<R> {
    pub fn open(mut r: R) -> Result<Self, PcapError> {
        let mut magic = [0u8; 4];
        let mut n = 0;
        while n < 4 {
            match r.read(&mut magic[n..])? {
                0 => return Err(PcapError::ShortHeader(24)),
                k => n += k,
            }
        }
        let r = std::io::Cursor::new(magic).chain(r);
        if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            Ok(CaptureFile::Pcapng(crate::pcapng::PcapngReader::new(r)?))
        } else {
            Ok(CaptureFile::Pcap(PcapReader::new(r)?))
        }
    }

    pub fn next_packet(&mut self) -> Result<Option<CapturedPacket>, PcapError> {
        match self {
            CaptureFile::Pcap(p) => {
                let (linktype, nanos) = (p.linktype, p.nanos);
                Ok(p.next_record()?.map(|rec| CapturedPacket {
                    linktype,
                    iface: 0,
                    orig_len: rec.orig_len,
                    ts_ns: Some(
                        u64::from(rec.ts_sec) * 1_000_000_000
                            + u64::from(rec.ts_frac) * if nanos { 1 } else { 1_000 },
                    ),
                    data: rec.data,
                }))
            }
            CaptureFile::Pcapng(p) => p.next_packet(),
        }
    }

    /// Packets read so far.
    pub fn packets(&self) -> u64 {
        match self {
            CaptureFile::Pcap(p) => p.index(),
            CaptureFile::Pcapng(p) => p.packets(),
        }
    }
}
