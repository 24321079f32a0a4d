//! Reading classic pcap files (tcpdump -w), microsecond or nanosecond, either byte order.
//! Errors name the packet and byte offset where the file broke.

use super::common::{CaptureFileError, read_full, u32_in};
use std::io::Read;

/// One record.
#[derive(Debug, Clone)]
pub struct Record {
    pub ts_sec: u32,
    /// Microseconds or nanoseconds, per the file.
    pub ts_frac: u32,
    /// The packet's length on the wire.
    pub orig_len: u32,
    pub data: Vec<u8>,
}

pub struct PcapReader<R> {
    r: R,
    big_endian: bool,
    pub nanos: bool,
    pub linktype: u32,
    pub snaplen: u32,
    index: u64,
    offset: u64,
}

/// Largest record accepted, whatever the header claims.
const MAX_RECORD: u32 = 256 * 1024;

impl<R: Read> PcapReader<R> {
    pub fn new(mut r: R) -> Result<Self, CaptureFileError> {
        let mut h = [0u8; 24];
        let n = read_full(&mut r, &mut h)?;
        if n < 4 {
            return Err(CaptureFileError::ShortHeader(24));
        }
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (big_endian, nanos) = match magic {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            0xd4c3_b2a1 => (true, false),
            0x4d3c_b2a1 => (true, true),
            m => return Err(CaptureFileError::BadMagic(m)),
        };
        if n < 24 {
            return Err(CaptureFileError::ShortHeader(24));
        }
        let u32_at = |i: usize| u32_in(&h[i..], big_endian);
        Ok(Self {
            big_endian,
            nanos,
            snaplen: u32_at(16),
            linktype: u32_at(20) & 0x0fff_ffff,
            r,
            index: 0,
            offset: 24,
        })
    }

    fn u32(&self, b: &[u8]) -> u32 {
        u32_in(b, self.big_endian)
    }

    /// The next record; `Ok(None)` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Record>, CaptureFileError> {
        let mut h = [0u8; 16];
        let n = read_full(&mut self.r, &mut h)?;
        if n == 0 {
            return Ok(None);
        }
        let bad = |s: &Self, reason: String| CaptureFileError::BadRecord {
            index: s.index,
            offset: s.offset,
            reason,
        };
        if n < 16 {
            return Err(bad(
                self,
                format!("file ends inside the record header ({n} of 16 bytes)"),
            ));
        }
        let (ts_sec, ts_frac, incl, orig) = (
            self.u32(&h[0..]),
            self.u32(&h[4..]),
            self.u32(&h[8..]),
            self.u32(&h[12..]),
        );
        if incl > MAX_RECORD {
            return Err(bad(
                self,
                format!("captured length {incl} exceeds {MAX_RECORD}"),
            ));
        }
        if incl > orig {
            return Err(bad(
                self,
                format!("captured length {incl} exceeds the original length {orig}"),
            ));
        }
        let mut data = vec![0u8; incl as usize];
        let got = read_full(&mut self.r, &mut data)?;
        if got < data.len() {
            return Err(bad(
                self,
                format!("file ends inside the packet ({got} of {incl} bytes)"),
            ));
        }
        self.index += 1;
        self.offset += 16 + u64::from(incl);
        Ok(Some(Record {
            ts_sec,
            ts_frac,
            orig_len: orig,
            data,
        }))
    }

    /// Records read so far.
    pub fn index(&self) -> u64 {
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(&[u8], u32)]) -> Vec<u8> {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        f.extend(65535u32.to_le_bytes());
        f.extend(1u32.to_le_bytes());
        for (data, orig) in records {
            f.extend(1u32.to_le_bytes());
            f.extend(2u32.to_le_bytes());
            f.extend((data.len() as u32).to_le_bytes());
            f.extend(orig.to_le_bytes());
            f.extend(*data);
        }
        f
    }

    #[test]
    fn reads_records_and_names_where_a_file_breaks() {
        let f = file(&[(b"abcd", 4), (b"xy", 60)]);
        let mut r = PcapReader::new(&f[..]).unwrap();
        assert_eq!(r.linktype, 1);
        assert_eq!(r.next_record().unwrap().unwrap().data, b"abcd");
        assert_eq!(r.next_record().unwrap().unwrap().orig_len, 60);
        assert!(r.next_record().unwrap().is_none());
        let cut = &f[..f.len() - 1];
        let mut r = PcapReader::new(cut).unwrap();
        r.next_record().unwrap();
        let e = r.next_record().unwrap_err().to_string();
        assert_eq!(
            e,
            "packet 1 at byte 44: file ends inside the packet (1 of 2 bytes)"
        );
        assert!(matches!(
            PcapReader::new(&b"garbage!"[..]),
            Err(CaptureFileError::BadMagic(_))
        ));
        assert!(matches!(
            PcapReader::new(&f[..10]),
            Err(CaptureFileError::ShortHeader(24))
        ));
    }
}
