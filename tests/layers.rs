//! The crate's shape, checked: the folders under `src/` are layers (bottom to top, as `src/lib.rs`
//! lists them), a module imports only from layers below its own, and no modules import each other in
//! a circle. Read from the source text (`crate::…` and `super::…` paths outside test modules).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom to top (`src/lib.rs` says what each holds).
const LAYERS: [&str; 12] =
    ["io", "ops", "data", "nn", "backbone", "heads", "model", "train", "aspects", "methods", "results", "serve"];

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `lib.rs` and `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().to_string()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every path after `crate::` or `super::` in `code`, as segments (groups `{a, b::c}` expanded),
/// resolved against `me` for `super`.
fn imported_paths(code: &str, me: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let text: String = bytes.iter().collect();
    for keyword in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(keyword) {
            let start = from + at;
            from = start + keyword.len();
            let before = text[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut base: Module =
                if keyword == "super::" { me[..me.len().saturating_sub(1)].to_vec() } else { vec![] };
            let rest = &text[from..];
            let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let segments: Vec<String> = path.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            base.extend(segments.iter().cloned());
            if path.ends_with("::") && rest[path.len()..].starts_with('{') {
                let group: String = rest[path.len() + 1..].chars().take_while(|c| *c != '}').collect();
                for item in group.split(',') {
                    let item = item.split(" as ").next().unwrap_or_default().trim();
                    if item.is_empty() || item == "self" {
                        continue;
                    }
                    let mut full = base.clone();
                    full.extend(item.split("::").map(str::to_string));
                    out.push(full);
                }
            } else {
                out.push(base);
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p))
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let me = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for path in imported_paths(&code(&text), &me) {
            if let Some(target) = resolve(&path, &modules).filter(|t| *t != me && !t.is_empty()) {
                edges.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

#[test]
fn imports_point_down_the_layers() {
    let layer = |m: &Module| m.first().and_then(|top| LAYERS.iter().position(|l| l == top));
    let mut upward = Vec::new();
    for (from, targets) in graph() {
        for to in targets {
            if let (Some(a), Some(b)) = (layer(&from), layer(&to)) {
                if b > a {
                    upward.push(format!("{} imports {}", from.join("::"), to.join("::")));
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports from a layer above:\n{}", upward.join("\n"));
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let edges = graph();
    // A module is on a circle when it can reach itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Module> = edges[start].iter().collect();
        while let Some(m) = stack.pop() {
            if m == start {
                circles.push(start.join("::"));
                break;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.get(m).into_iter().flatten());
            }
        }
    }
    assert!(circles.is_empty(), "modules on an import circle: {}", circles.join(", "));
}

/// Every top-level module of the library is a layer in the list above, and the other way round.
#[test]
fn every_module_of_the_library_is_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let modules: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';')).collect();
    assert_eq!(modules, LAYERS.iter().copied().collect::<BTreeSet<_>>());
}

/// The checker itself sees what it must: a group import, a `super` path, a comment it must ignore.
#[test]
fn the_import_reader_reads_groups_super_and_skips_comments() {
    let me: Module = vec!["methods".into(), "rodos".into()];
    let text = "use crate::nn::{Adapters, lora::LoraLinear};\nuse super::scorer::Scores;\n// crate::serve::x\n";
    let paths = imported_paths(&code(text), &me);
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["nn::Adapters", "nn::lora::LoraLinear", "methods::scorer::Scores"]);
}
