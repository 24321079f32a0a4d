//! The probe library's modules form layers (lib.rs, docs/architecture.md): each top-level
//! module uses only modules of lower layers, so there is no upward arrow; and no module,
//! at any depth, is in an import circle (`crate::`, `super::` and `self::` paths read by
//! `modgraph`, which servers' and bench's layering tests share).

mod modgraph;

use std::path::Path;

#[test]
fn no_module_is_in_an_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    modgraph::Graph::read(&src).assert_no_circle(150);
}

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["flow", "web_config"],
    &["web_tls"],
    &[
        "health",
        "labels",
        "llm",
        "packet",
        "classify",
        "spans",
        "capture_file",
        "api",
        "shutdown",
        "span_socket",
    ],
    &["attribution"],
    &["table", "passive"],
    &["records", "metrics", "output"],
    &["backend"],
    &["engine"],
    &["analyze"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level modules `src` names as `crate::name`.
fn uses(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut checked = 0;
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The binary's own files and the crate root are above every layer; unit tests in
        // files of their own may reach anywhere.
        if ["main", "cli", "lib"].contains(&top.as_str()) || path.ends_with("tests.rs") {
            continue;
        }
        let mine =
            layer(&top).unwrap_or_else(|| panic!("{top} is in no layer (tests/layering.rs)"));
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for used in uses(code) {
            if used == top {
                continue;
            }
            let theirs = layer(&used).unwrap_or_else(|| panic!("{used} is in no layer"));
            assert!(
                theirs < mine,
                "{} uses crate::{used} (layer {theirs}) from layer {mine}",
                rel.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} uses found: is the parser still right?"
    );
}
