//! Capture files of either format: classic pcap (tcpdump -w) and pcapng (tshark,
//! Wireshark), told apart by their first bytes. Errors name the packet and byte offset
//! where a file broke.

mod common;
pub mod pcap;
pub mod pcapng;

pub use common::{CaptureFileError, CapturedPacket};
pub use pcap::{PcapReader, Record};
pub use pcapng::PcapngReader;
use std::io::Read;

/// The reader after the four magic bytes were read and put back in front.
type Sniffed<R> = std::io::Chain<std::io::Cursor<[u8; 4]>, R>;

pub enum CaptureFile<R> {
    Pcap(PcapReader<Sniffed<R>>),
    Pcapng(PcapngReader<R>),
}

impl<R: Read> CaptureFile<R> {
    pub fn open(mut r: R) -> Result<Self, CaptureFileError> {
        let mut magic = [0u8; 4];
        let mut n = 0;
        while n < 4 {
            match r.read(&mut magic[n..])? {
                0 => return Err(CaptureFileError::ShortHeader(24)),
                k => n += k,
            }
        }
        let r = std::io::Cursor::new(magic).chain(r);
        if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            Ok(CaptureFile::Pcapng(PcapngReader::new(r)?))
        } else {
            Ok(CaptureFile::Pcap(PcapReader::new(r)?))
        }
    }

    pub fn next_packet(&mut self) -> Result<Option<CapturedPacket>, CaptureFileError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_enhanced_packets_and_names_where_it_broke() {
        let f = pcapng::build::file(101, &[b"\x45abc", b"\x60xyz12"]);
        let mut c = CaptureFile::open(&f[..]).unwrap();
        let a = c.next_packet().unwrap().unwrap();
        assert_eq!(
            (a.linktype, a.data.as_slice(), a.orig_len),
            (101, &b"\x45abc"[..], 4)
        );
        assert_eq!(c.next_packet().unwrap().unwrap().data, b"\x60xyz12");
        assert!(c.next_packet().unwrap().is_none());
        let mut c = CaptureFile::open(&f[..f.len() - 3]).unwrap();
        c.next_packet().unwrap();
        let e = c.next_packet().unwrap_err().to_string();
        assert!(e.starts_with("packet 1 at byte 84:"), "{e}");
        for n in 0..f.len() {
            if let Ok(mut c) = CaptureFile::open(&f[..n]) {
                while let Ok(Some(_)) = c.next_packet() {}
            }
        }
    }
}
