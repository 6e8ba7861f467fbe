//! The layer rule: every `crate::X` a module of `src/` names points down
//! [`ORDER`]. This list is the authoritative statement of the layering;
//! docs/architecture.md copies it.
//!
//! The check reads the source text: each `crate::X` outside `#[cfg(test)]`
//! items and `tests.rs` files, doc comments included (a doc link is a
//! dependency too; name a higher module in prose, as "the `server`
//! module"). `src/lib.rs`, `src/main.rs` and `src/bin/` are the roots that
//! tie the layers together and are not checked.

use std::fs;
use std::path::{Path, PathBuf};

/// The top-level modules of the library, bottom to top. A module may use
/// the modules listed before it and none listed after it.
const ORDER: &[&str] = &[
    // Test-only seam for the simulator's planted bugs; imports nothing.
    "planted",
    // Generated protobuf types; import nothing of the crate.
    "proto",
    // Plain data: settings and the limits every layer checks. It imports
    // nothing from the crate (the default anti-entropy message size lives
    // here because the peer message limit is derived from it), so that the
    // lowest layers that validate input may read it.
    "config",
    // TLS settings, node identities in certificates, client tokens:
    // imports nothing from the crate; the peer client and server, the API
    // and the node use it.
    "security",
    // The metrics registry every layer records into; imports nothing of the
    // crate.
    "metrics",
    // Values and merge rules, then the clock that issues their versions.
    "crdt",
    "clock",
    // The library error wraps the clock's and the crdt's errors.
    "error",
    // Key hashing, partitions and digests; the Merkle trees built on them;
    // the local store built on both; counter sequence tables over the store.
    "keyspace",
    "merkle",
    "store",
    "dots",
    // Anti-entropy messages: below both `net`, which carries them, and
    // `anti_entropy`, which speaks them.
    "sync_message",
    // Placement of partitions over nodes.
    "ring",
    // The fault switch all peer traffic passes through (gossip included).
    "switch",
    // Membership, node identity and the topology (placement plus liveness).
    "cluster",
    // The peer protocol's client side and wire format.
    "net",
    // Which members gossip may place (with peer TLS: only those that
    // proved their id through the peer client); used by the node.
    "admission",
    // Delta batches and hints to peers.
    "replication",
    // The write-ahead log and snapshots: the store's journal and
    // replication's hint log, which encodes entries as `net` does.
    "durability",
    // Request routing, quorums and read repair.
    "coordinator",
    // Merkle sync sessions between replicas; reads the coordinator's
    // topology.
    "anti_entropy",
    // The peer protocol's server side, above the subsystems it serves.
    "server",
    // The public gRPC edge.
    "api",
    // What a node exposes at scrape time, read from the subsystems above.
    "scrape",
    // One running node: wires everything above together.
    "node",
    // The deterministic simulator, which drives the whole stack.
    "sim",
];

/// The modules `src/lib.rs` declares, in file order.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            Some(name)
        })
        .collect()
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `text` outside `#[cfg(test)]` items, with their 1-based
/// numbers. An item ends at its first line ending in `;` or at the closing
/// brace at its own indentation (the layout rustfmt gives).
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() != "#[cfg(test)]" {
            kept.push((i + 1, line));
            i += 1;
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        i += 1;
        while i < lines.len() && lines[i].trim_start().starts_with("#[") {
            i += 1;
        }
        if i < lines.len() && !lines[i].trim_end().ends_with(';') {
            let close = format!("{indent}}}");
            while i < lines.len() && !lines[i].starts_with(&close) {
                i += 1;
            }
        }
        i += 1;
    }
    kept
}

/// The module names `line` reaches through `crate::`, grouped imports
/// (`crate::{a::X, b}`) included.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphanumeric() || c == '_') => name.push(c),
                    _ if start && !name.is_empty() => {
                        found.push(std::mem::take(&mut name));
                        start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                found.push(name);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn imports_point_down_the_layer_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");

    let mut declared = declared_modules(&lib);
    declared.sort();
    let mut listed: Vec<String> = ORDER.iter().map(|m| m.to_string()).collect();
    listed.sort();
    assert_eq!(
        declared, listed,
        "src/lib.rs declares these modules, tests/layers.rs ORDER lists these: \
         place every module in ORDER exactly once"
    );

    let rank = |module: &str| ORDER.iter().position(|m| *m == module);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .expect("a path component")
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let file_name = file.file_name().expect("a file name").to_string_lossy();
        if top == "bin" || top == "lib.rs" || top == "main.rs" || file_name == "tests.rs" {
            continue;
        }
        let module = top.trim_end_matches(".rs");
        let own = rank(module)
            .unwrap_or_else(|| panic!("src/{} is in no module of ORDER", relative.display()));
        let text = fs::read_to_string(file).expect("a source file");
        for (number, line) in non_test_lines(&text) {
            for used in crate_paths(line) {
                if let Some(theirs) = rank(&used) {
                    if theirs > own {
                        violations.push(format!(
                            "src/{}:{number}: `{module}` uses `crate::{used}`, \
                             which is above it in the layer order",
                            relative.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that point up the layer order (tests/layers.rs ORDER, bottom to top: {}):\n{}",
        ORDER.join(" < "),
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_grouped_imports_and_skips_test_items() {
    assert_eq!(
        crate_paths("use crate::{clock::Clock, crdt::{Entry, Version}};"),
        ["clock", "crdt"]
    );
    assert_eq!(crate_paths("x($crate::a::b) + crate::node::f()"), ["node"]);
    let text = "use crate::a::X;\n#[cfg(test)]\nuse crate::b::Y;\n#[cfg(test)]\nmod tests {\n    use crate::c::Z;\n}\nuse crate::d::W;\n";
    let kept: Vec<usize> = non_test_lines(text).iter().map(|(n, _)| *n).collect();
    assert_eq!(kept, [1, 8]);
}

/// docs/architecture.md copies [`ORDER`] in a `text` block that starts
/// with its lowest module, as `a < b < c`, wrapped as it likes: the copy
/// must be the same list.
#[test]
fn the_architecture_page_copies_the_order() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md");
    let page = fs::read_to_string(&page).expect("docs/architecture.md");
    let first = format!("{} <", ORDER[0]);
    let copy = page
        .split("```text")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.trim_start().starts_with(&first))
        .unwrap_or_else(|| panic!("docs/architecture.md has no ```text block starting `{first}`"));
    let copied: Vec<&str> = copy.split('<').map(str::trim).collect();
    assert_eq!(
        copied,
        ORDER,
        "docs/architecture.md's copy of the layer order differs from tests/layers.rs ORDER: \
         write it as {}",
        ORDER.join(" < ")
    );
}
