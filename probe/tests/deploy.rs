//! The Kubernetes manifests of deploy/, offline: every resource validates against the
//! Kubernetes 1.37 schemas (kubernetes-validate, strict: an unknown field fails), the
//! scrape job in the ConfigMap is a Prometheus configuration promtool accepts (its
//! relabelling as written; the Debian build has no Kubernetes discovery), and the
//! pieces fit together (the probe is not privileged but has the capabilities eBPF needs,
//! the PodMonitor selects the DaemonSet's pods and port, both label the node, the
//! probe's arguments are ones it takes). `cargo xtask setup` installs kubernetes-validate
//! into target/tools-venv.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("deploy").join(name)).expect(name)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let validate = Path::new(ROOT).join("target/tools-venv/bin/kubernetes-validate");
    assert!(
        validate.exists(),
        "{} missing: run `cargo xtask setup`",
        validate.display()
    );
    let files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for kind in [
        "namespace/tokenwire",
        "daemonset/tokenwire-probe",
        "deployment/tokenwire-servers",
        "service/tokenwire-servers",
        "configmap/tokenwire-prometheus-scrape",
    ] {
        assert!(
            log.contains(&format!("passed for resource {kind}")),
            "{kind} not validated:\n{log}"
        );
    }
    // The one custom resource has no schema offline: the test below checks its fields.
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn the_scrape_job_is_a_prometheus_configuration() {
    let cm = read("prometheus-scrape.yaml");
    let start = cm.find("tokenwire-probe.yml: |").expect("the scrape job");
    let job: String = cm[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.get(4..).unwrap_or("").to_owned() + "\n")
        .collect();
    assert!(job.contains("target_label: node"), "{job}");
    // Debian's Prometheus is built without Kubernetes service discovery, so promtool here
    // checks the job with a static target in its place: everything else (the relabelling
    // rules and their regular expressions) as written.
    let sd = job
        .find("    kubernetes_sd_configs:")
        .expect("kubernetes_sd_configs");
    let relabel = job.find("    relabel_configs:").expect("relabel_configs");
    let job = format!(
        "{}    static_configs:\n      - targets: ['127.0.0.1:9464']\n{}",
        &job[..sd],
        &job[relabel..]
    );
    // promtool opens the files the job names (the client certificate, its key, the CA,
    // the password file): they come from a Secret on a cluster, so here they are made in
    // a directory of the test's own, and the job points there.
    let dir = std::env::temp_dir().join(format!("tokenwire-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["tokenwire-ca".into()]).unwrap();
    let client = rcgen::generate_simple_self_signed(vec!["prometheus".into()]).unwrap();
    for (name, text) in [
        ("ca.crt", ca.cert.pem()),
        ("client.crt", client.cert.pem()),
        ("client.key", client.signing_key.serialize_pem()),
        ("password", "not-the-real-one\n".to_owned()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    assert!(
        job.contains("/etc/prometheus/tokenwire/client.crt"),
        "{job}"
    );
    let job = job.replace("/etc/prometheus/tokenwire/", &format!("{}/", dir.display()));
    let file = dir.join("tokenwire-probe.yml");
    std::fs::write(&file, &job).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_pieces_fit_together() {
    let ds = read("probe-daemonset.yaml");
    // eBPF's capabilities, not a privileged container.
    assert!(ds.contains("privileged: false"));
    assert!(ds.contains(r#"add: ["BPF", "NET_ADMIN", "PERFMON"]"#));
    assert!(ds.contains("hostNetwork: true"));
    assert!(ds.contains("path: /sys/fs/bpf"));
    // Spans: the probe and the companions share the host directory.
    let servers = read("companions.yaml");
    for text in [&ds, &servers] {
        assert!(text.contains("--spans=/run/tokenwire/spans.sock"));
        assert!(text.contains("path: /run/tokenwire"));
    }
    // The PodMonitor selects the DaemonSet's pods and names its port; both scrape
    // configurations take the node from the target.
    let pm = read("podmonitor.yaml");
    assert!(pm.contains("app.kubernetes.io/name: tokenwire-probe"));
    assert!(pm.contains("port: metrics"));
    assert!(ds.contains("name: metrics"));
    assert!(pm.contains("sourceLabels: [__meta_kubernetes_pod_node_name]"));
    assert!(pm.contains("targetLabel: node"));
    // The endpoints want TLS, a client certificate and basic auth (--web-config from the
    // Secret the DaemonSet mounts); both scrape configurations speak https and check the
    // one name the probes' certificate holds.
    assert!(ds.contains("--web-config=/etc/tokenwire/web/web-config.yml"));
    assert!(ds.contains("mountPath: /etc/tokenwire/web"));
    assert!(ds.contains("secretName: tokenwire-probe-web"));
    let scrape = read("prometheus-scrape.yaml");
    for (text, name) in [
        (&pm, "serverName: tokenwire-probe"),
        (&scrape, "server_name: tokenwire-probe"),
    ] {
        assert!(text.contains("scheme: https"));
        assert!(text.contains(name));
    }
    // The probe takes the DaemonSet's arguments (clap rejects unknown ones before
    // anything starts, so `--help` after them answers only if they parse).
    let args: Vec<String> = ds
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("args:"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- "))
        .map(|l| l.trim_start().trim_start_matches("- ").to_owned())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwire-probe"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
