//! No import cycles between the top-level modules of a crate: reads every
//! `crate::<module>` path in each crate's `src/` (not in `bin/`, comments
//! or `#[cfg(test)] mod` blocks) and fails on a cycle, naming it. A module
//! that needs the aggregate settings of its crate while the aggregate
//! names its section is such a cycle: take the section instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 6] = [
    "bench",
    "consumers",
    "gateway",
    "kafka",
    "runtime",
    "schemas",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to, or `None` for the crate roots
/// and the binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "bin" | "lib.rs" | "main.rs" => None,
        _ => Some(first.trim_end_matches(".rs").to_string()),
    }
}

/// The names following `crate::` on `line`, a `crate::{a, b::c}` group
/// giving each of its members.
fn crate_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let mut names = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or_default();
                names.extend(group.split(',').map(ident));
            }
            None => names.push(ident(rest)),
        }
    }
    names
}

fn graph(krate: &str) -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(krate)
        .join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            let test_module = *line == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|next| next.starts_with("mod "));
            if test_module {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for target in crate_paths(line) {
                if target != module && modules.contains(&target) {
                    graph.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let cycles: Vec<String> = CRATES
        .iter()
        .filter_map(|krate| {
            find_cycle(&graph(krate)).map(|cycle| format!("{krate}: {}", cycle.join(" -> ")))
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_check_sees_a_cycle_and_the_edges() {
    let mut cyclic = Graph::new();
    cyclic
        .entry("config".into())
        .or_default()
        .insert("crm".into());
    cyclic
        .entry("crm".into())
        .or_default()
        .insert("replay".into());
    cyclic
        .entry("replay".into())
        .or_default()
        .insert("config".into());
    assert_eq!(
        find_cycle(&cyclic).expect("a cycle"),
        ["config", "crm", "replay", "config"]
    );
    cyclic.get_mut("replay").unwrap().clear();
    assert_eq!(find_cycle(&cyclic), None);
    // The consumers' aggregate names the sections it holds.
    let consumers = graph("consumers");
    assert!(consumers["config"].contains("crm"), "{consumers:?}");
    assert_eq!(
        crate_paths("use crate::{a, b::C}; x(crate::c::D)"),
        ["a", "b", "c"]
    );
}
