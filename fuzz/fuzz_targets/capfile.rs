//! Arbitrary bytes as a capture file: `analyze` returns totals or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_probe::labels::Labels;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = tokenwire_probe::analyze::analyze(data, Labels::default(), Vec::new(), Default::default()) {
        let _ = a.rows.len();
    }
});
