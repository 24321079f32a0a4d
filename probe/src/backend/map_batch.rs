//! Reading a whole BPF hash map with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+): one syscall per
//! few thousand entries, where aya's iterator (0.14 has no batch operations) makes two per
//! entry (next key, then lookup). The probe reads its slot-to-key map once a second; with
//! thousands of connections open that read was most of the time its one loop was busy
//! (docs/performance.md, the capacity section). Callers fall back to aya's iterator
//! when the kernel refuses the command.

use aya::Pod;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`, the part the batch commands read.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per syscall at first (doubled when a hash bucket holds more).
const CHUNK: usize = 4096;

/// Every `(key, value)` of the hash map `fd`, whose keys are `K` and values `V` exactly as
/// the map was created. Entries written or deleted meanwhile may or may not be included,
/// as with any map iteration.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut chunk = CHUNK;
    let zeroed = |n: usize| -> Vec<u8> { vec![0u8; n] };
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    let (mut keys, mut values) = (zeroed(chunk * ks), zeroed(chunk * vs));
    // The hash map's batch token is its next bucket's index (a u32); room for 8 bytes.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    let mut out = Vec::new();
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::addr_of!(token_in) as u64
            },
            out_batch: std::ptr::addr_of_mut!(token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the batch layout of bpf_attr and lives across the call; the
        // buffers it points to hold `count` keys and values of the map's sizes, and the
        // tokens 8 bytes each. The kernel writes no more than that, and `count` back.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::addr_of_mut!(attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            // SAFETY: the kernel filled entries 0..n; K and V are Pod (any bytes are a
            // value), read unaligned from the byte buffers.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * ks).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * vs).cast::<V>()),
                )
            };
            out.push((k, v));
        }
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            // The last entries came with this call.
            Some(libc::ENOENT) => return Ok(out),
            // One bucket holds more entries than fit: ask again with room for them.
            Some(libc::ENOSPC) if n == 0 && chunk < (1 << 20) => {
                chunk *= 2;
                (keys, values) = (zeroed(chunk * ks), zeroed(chunk * vs));
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("bpf"))),
        }
        token_in = token_out;
        first = false;
    }
}
