//! Differential: arbitrary bytes as a packet run through the probe's eBPF program (with
//! BPF_PROG_TEST_RUN, nothing attached) and through the user-space parser; the two must
//! count it the same way (key, bytes, TCP flags, payload length, or why not keyed). The
//! first byte picks the program: even for the Ethernet one, odd for the one of devices
//! without a link header. Runs as root (it loads eBPF programs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use tokenwire_probe::backend::ebpf_object::LinkKind;
use tokenwire_probe::backend::kernel_run::KernelRun;

fn kernel() -> &'static Mutex<KernelRun> {
    static K: OnceLock<Mutex<KernelRun>> = OnceLock::new();
    K.get_or_init(|| Mutex::new(KernelRun::load().expect("loading the eBPF programs (as root)")))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let link = if sel & 1 == 0 { LinkKind::L2 } else { LinkKind::L3 };
    let mut k = kernel().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((kernel, user)) = k.differ(link, bytes).expect("running the program") {
        panic!("{link:?} {bytes:02x?}\nkernel: {kernel:?}\nuser:   {user:?}");
    }
});
