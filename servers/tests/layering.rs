//! No module of the servers library, at any depth, is in an import circle: every
//! `crate::`, `super::` and `self::` path read (probe/tests/modgraph, shared with the
//! probe's layering test).

#[path = "../../probe/tests/modgraph/mod.rs"]
mod modgraph;

#[test]
fn no_module_is_in_an_import_circle() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    modgraph::Graph::read(&src).assert_no_circle(100);
}
