//! Embeds the eBPF object built by `cargo xtask build-ebpf`. A missing object, or one older
//! than the kernel-side sources, is a build error that says what to run.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn newest(dir: &Path, newest_so_far: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest(&p, newest_so_far);
        } else if let Ok(t) = e.metadata().and_then(|m| m.modified())
            && newest_so_far.as_ref().is_none_or(|(n, _)| t > *n)
        {
            *newest_so_far = Some((t, p));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().unwrap_or(&manifest).to_path_buf();
    let object = root.join("target/bpf/bpfel-unknown-none/release/tokenwire-probe-ebpf");
    // The kernel side's sources: its crate, and the shared #[repr(C)] types (lib.rs).
    // probe-common's other modules (the approach registry, the spans wire types, the
    // launcher) are user space's: the kernel uses none of them.
    let sources = [
        root.join("probe-ebpf/src"),
        root.join("probe-ebpf/Cargo.toml"),
        root.join("probe-common/src/lib.rs"),
    ];
    println!("cargo:rerun-if-changed={}", object.display());
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return; // no eBPF backend off Linux
    }
    let built = std::fs::metadata(&object).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "\n\nthe eBPF object {} is missing: run `cargo xtask build-ebpf` (or `cargo xtask setup`)\n",
            object.display()
        );
    };
    let mut newest_src = None;
    for s in &sources {
        if s.is_dir() {
            newest(s, &mut newest_src);
        } else if let Ok(t) = std::fs::metadata(s).and_then(|m| m.modified())
            && newest_src.as_ref().is_none_or(|(n, _)| t > *n)
        {
            newest_src = Some((t, s.clone()));
        }
    }
    if let Some((t, path)) = newest_src
        && t > built
    {
        panic!(
            "\n\nthe eBPF object {} is older than {}: run `cargo xtask build-ebpf`\n",
            object.display(),
            path.display()
        );
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("tokenwire-probe-ebpf.o");
    if let Err(e) = std::fs::copy(&object, &out) {
        panic!("copying {} to {}: {e}", object.display(), out.display());
    }
}
