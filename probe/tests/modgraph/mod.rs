//! A crate's module graph, read from its sources, for the layering tests (probe, servers,
//! bench): every `crate::`, `super::` and `self::` path in a module's code (comments and
//! unit tests left out), `use` trees with their `{..}` groups included, resolved to the
//! module it names. A child's use of its ancestors is no edge (the parent is the child's
//! interface, as `super::Backend` in a backend); every other use is, and the graph must
//! have no circle.
#![allow(dead_code)] // each crate's test uses a different part

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root, e.g. `["backend", "ebpf"]`; the root is `[]`.
pub type ModPath = Vec<String>;

/// Every module of a crate (one per file) and the modules each one uses.
pub struct Graph {
    pub edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
    /// Paths read, resolved or not: a parser that finds none is broken.
    pub paths_read: usize,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/backend/ebpf.rs` -> `backend::ebpf`; `mod.rs`, `lib.rs` and `main.rs` name their
/// directory. Files under `src/bin/` are binaries of their own, and `tests.rs` files unit
/// tests (which may reach anywhere): skipped.
fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.trim_end_matches(".rs");
    if stem == "tests" {
        return None;
    }
    if !["mod", "lib", "main"].contains(&stem) {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// The code of a file: comments removed, and nothing from the first `#[cfg(test)]` on
/// (unit tests may reach anywhere).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Reads the path (or use tree) at `i`: its segments after the prefix, each full path
/// pushed to `out` with `prefix` before it.
fn tree(s: &[u8], i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut i = skip_ws(s, i);
    if s.get(i) == Some(&b'{') {
        i += 1;
        loop {
            i = skip_ws(s, i);
            match s.get(i) {
                None => return i,
                Some(b'}') => return i + 1,
                Some(b',') => i += 1,
                _ => {
                    let before = i;
                    i = tree(s, i, prefix, out);
                    if i == before {
                        i += 1;
                    }
                }
            }
        }
    }
    let (name, j) = ident(s, i);
    if name.is_empty() {
        out.push(prefix.to_vec());
        return i;
    }
    let mut path = prefix.to_vec();
    path.push(name);
    if s[j..].starts_with(b"::") {
        tree(s, j + 2, &path, out)
    } else {
        out.push(path);
        j
    }
}

/// Every path starting with `crate::`, `super::` or `self::` in `code`, resolved against
/// `module` to a path from the crate root.
fn paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        let mut base: Option<Vec<String>> = None;
        let mut j = i;
        if boundary && s[i..].starts_with(b"crate::") {
            base = Some(Vec::new());
            j = i + 7;
        } else if boundary && s[i..].starts_with(b"self::") {
            base = Some(module.to_vec());
            j = i + 6;
        } else if boundary && s[i..].starts_with(b"super::") {
            let mut m = module.to_vec();
            while s[j..].starts_with(b"super::") {
                m.pop();
                j += 7;
            }
            base = Some(m);
        }
        match base {
            Some(b) => i = tree(s, j, &b, &mut out).max(i + 1),
            None => i += 1,
        }
    }
    out
}

impl Graph {
    /// Reads the crate whose sources are in `src`.
    pub fn read(src: &Path) -> Self {
        let mut all = Vec::new();
        files(src, &mut all);
        let modules: BTreeMap<ModPath, PathBuf> = all
            .into_iter()
            .filter_map(|f| Some((module_of(src, &f)?, f)))
            .collect();
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        let mut paths_read = 0;
        for (module, file) in &modules {
            let text = std::fs::read_to_string(file).unwrap();
            let mine = edges.entry(module.clone()).or_default();
            for p in paths(&code(&text), module) {
                paths_read += 1;
                // The longest prefix that is a module (the rest names an item in it).
                let target = (0..=p.len())
                    .rev()
                    .map(|n| p[..n].to_vec())
                    .find(|m| modules.contains_key(m))
                    .unwrap_or_default();
                let ancestor = module.starts_with(&target);
                if !ancestor {
                    mine.insert(target);
                }
            }
        }
        Self { edges, paths_read }
    }

    /// A circle of modules, if there is one (as `a -> b -> a`).
    pub fn circle(&self) -> Option<String> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(
            g: &Graph,
            m: &ModPath,
            marks: &mut BTreeMap<ModPath, Mark>,
            stack: &mut Vec<ModPath>,
        ) -> Option<String> {
            match marks.get(m) {
                Some(Mark::Done) => return None,
                Some(Mark::Open) => {
                    let from = stack.iter().position(|x| x == m).unwrap_or(0);
                    let names: Vec<String> = stack[from..]
                        .iter()
                        .chain([m])
                        .map(|p| format!("crate::{}", p.join("::")))
                        .collect();
                    return Some(names.join(" -> "));
                }
                None => {}
            }
            marks.insert(m.clone(), Mark::Open);
            stack.push(m.clone());
            for next in g.edges.get(m).into_iter().flatten() {
                if let Some(c) = visit(g, next, marks, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            marks.insert(m.clone(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for m in self.edges.keys() {
            if let Some(c) = visit(self, m, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
        None
    }

    /// Asserts the crate has no circle and that the reader found paths to check.
    pub fn assert_no_circle(&self, min_paths: usize) {
        assert!(
            self.paths_read >= min_paths,
            "only {} paths read: is the parser still right?",
            self.paths_read
        );
        if let Some(c) = self.circle() {
            panic!("import circle: {c}");
        }
    }
}

#[test]
fn use_trees_and_relative_paths_resolve() {
    let module: Vec<String> = vec!["backend".into(), "ebpf".into()];
    let got = paths(
        "use super::{flow_maps::Read, Backend};\nuse crate::flow::{self, Key};\nlet x = self::inner::f();",
        &module,
    );
    let want: Vec<Vec<&str>> = vec![
        vec!["backend", "flow_maps", "Read"],
        vec!["backend", "Backend"],
        vec!["flow", "self"],
        vec!["flow", "Key"],
        vec!["backend", "ebpf", "inner", "f"],
    ];
    assert_eq!(got, want);
}
