//! Who may send spans: the socket is 0660 for the probe's user and `--spans-group`, in a
//! directory others cannot change. A user outside the group is refused by the kernel (and
//! its message never reaches the probe); a member's spans are taken. Runs as root; the
//! senders are Debian's python3 under setpriv as user nobody.

mod common;

use common::live::Probe;
use common::{isolated, require_root};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const START: &str = r#"{"v":1,"type":"start","id":"ID","approach":"sse","transport":"tls","client":"127.0.0.1:1","server":"127.0.0.1:2","time_unix_ns":1}"#;

/// Sends one start as uid nobody with primary group `gid` and no other groups; the
/// sender's verdict ("sent" or the error's name).
fn send_as_nobody(gid: u32, path: &Path, id: &str) -> String {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ntry:\n    s.sendto(sys.argv[1].encode(),sys.argv[2]); print('sent')\nexcept OSError as e:\n    print(type(e).__name__)";
    let out = Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .args(["/usr/bin/python3", "-c", script])
        .arg(START.replace("ID", id))
        .arg(path)
        .output()
        .expect("setpriv and /usr/bin/python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn accepted(probe: &Probe) -> u64 {
    let (_, m) = probe.get("/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix("tokenwire_probe_spans_accepted_total "))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn spans_path(args: &[String; 4]) -> std::path::PathBuf {
    args[3].clone().into()
}

#[test]
fn only_the_spans_group_may_send() {
    require_root();
    // nogroup (65534) may send; users (100) may not.
    let args = isolated("access-group");
    let path = spans_path(&args);
    let probe = Probe::start_with(
        "pcap",
        &path,
        &[],
        &["--spans-group".into(), "nogroup".into()],
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "the socket's mode"
    );
    assert_eq!(meta.gid(), 65534);
    let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(
        dir.permissions().mode() & 0o022,
        0,
        "nobody else can change the directory"
    );
    assert_eq!(send_as_nobody(100, &path, "outsider"), "PermissionError");
    assert_eq!(send_as_nobody(65534, &path, "member"), "sent");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(accepted(&probe), 1, "the member's start, and only it");
    drop(probe);

    // Without --spans-group: the probe's own group (root) only.
    let args = isolated("access-default");
    let path = spans_path(&args);
    let probe = Probe::start_with("pcap", &path, &[], &[]);
    assert_eq!(std::fs::metadata(&path).unwrap().gid(), 0);
    assert_eq!(send_as_nobody(65534, &path, "nobody"), "PermissionError");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(accepted(&probe), 0);
}

#[test]
fn a_directory_others_can_change_is_refused() {
    require_root();
    let args = isolated("access-unsafe");
    let path = spans_path(&args);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwire-probe"))
        .args([
            "run",
            "--backend",
            "pcap",
            "--iface",
            "lo",
            "--duration",
            "1",
        ])
        .args(&args)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can be changed by others") && err.contains("mode 777"),
        "{err}"
    );
}
