//! The crate graph is the layering of the design (DESIGN §1): every crate's bluepoll
//! dependencies are exactly the ones docs/architecture.md lists for it, and none of them is
//! above it in the stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The stack, bottom up; a crate may depend only on crates earlier in this list.
const ORDER: &[&str] = &[
    "base", "nvme", "reactor", "bluefs", "kv", "store", "image", "bench",
];

/// Short name (`nvme`) → its bluepoll dependencies (short names), normal and optional, from the
/// crate's Cargo.toml.
fn manifest_edges(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for short in ORDER {
        let path = root.join("crates").join(short).join("Cargo.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        let name = manifest["package"]["name"].as_str().unwrap();
        assert_eq!(name, format!("bluepoll-{short}"), "{}", path.display());
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| {
                d.keys()
                    .filter_map(|k| k.strip_prefix("bluepoll-"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        edges.insert(short.to_string(), deps);
    }
    edges
}

/// The table of docs/architecture.md: `| bluepoll-X | a, b; with `store`: c |`.
fn documented_edges(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut edges = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, deps, _] = cells[..] else {
            continue;
        };
        let Some(short) = name.strip_prefix("bluepoll-") else {
            continue;
        };
        let deps = deps
            .replace("with `store`:", ",")
            .replace(';', ",")
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != "—")
            .map(str::to_owned)
            .collect();
        edges.insert(short.to_owned(), deps);
    }
    edges
}

#[test]
fn crates_depend_only_downwards_and_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifests = manifest_edges(root);
    for (name, deps) in &manifests {
        let rank = ORDER.iter().position(|o| o == name).unwrap();
        for dep in deps {
            let dep_rank = ORDER
                .iter()
                .position(|o| o == dep)
                .unwrap_or_else(|| panic!("bluepoll-{name} depends on unknown bluepoll-{dep}"));
            assert!(
                dep_rank < rank,
                "bluepoll-{name} depends on bluepoll-{dep}, which is above it"
            );
        }
    }
    assert_eq!(
        manifests,
        documented_edges(root),
        "crates/*/Cargo.toml and the table in docs/architecture.md disagree"
    );
}

#[test]
fn only_the_kv_crate_builds_rocksdb() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for short in ORDER {
        let text =
            std::fs::read_to_string(root.join("crates").join(short).join("Cargo.toml")).unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        let Some(deps) = manifest.get("dependencies").and_then(|d| d.as_table()) else {
            continue;
        };
        for rocks in ["rocksdb", "librocksdb-sys"] {
            if let Some(dep) = deps.get(rocks) {
                let optional = dep
                    .get("optional")
                    .and_then(|o| o.as_bool())
                    .unwrap_or(false);
                assert!(
                    *short == "kv" || optional,
                    "bluepoll-{short} depends on {rocks} unconditionally: only bluepoll-kv may"
                );
            }
        }
    }
}
