//! The crate's module graph, built from its `crate::` paths (in `use` trees and in code),
//! must have no cycle of any length and no import from a later stage of the data path into
//! an earlier one: kernel -> enrich -> detect -> output -> pipeline -> cmd -> cli.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The data path's stages, in order. A module may import only from its own stage or an
/// earlier one.
const STAGES: &[&str] = &[
    "kernel", "enrich", "detect", "output", "pipeline", "cmd", "cli",
];
/// Unit-test helpers (`#[cfg(test)]`), usable from any stage.
const ANY_STAGE: &[&str] = &["testing", "testrng"];

/// One `crate::` path and where it was written.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    path: String,
    line: usize,
}

/// `a/b.rs` and `a/b/mod.rs` -> `a::b`; `lib.rs` -> the crate root (``).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code without comments and string literals, so neither can add or hide a path.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    } else if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('"', '\'') must not open a string; lifetimes pass through.
            b'\'' if b.get(i + 2) == Some(&b'\'') => {
                out.push_str("' '");
                i += 3;
            }
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                let end = src[i + 2..].find('\'').map_or(b.len(), |e| i + 3 + e);
                out.push_str("' '");
                i = end;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let item = tree.split(" as ").next().unwrap_or(tree).trim();
            let item = item.trim_end_matches("::*");
            match item {
                "" => {}
                "self" => out.push(prefix.trim_end_matches("::").to_string()),
                _ => out.push(format!("{prefix}{item}")),
            }
        }
        Some(open) => {
            let head = &tree[..open];
            let body = &tree[open + 1..tree.rfind('}').expect("balanced use tree")];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&format!("{prefix}{head}"), &body[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&format!("{prefix}{head}"), &body[start..], out);
        }
    }
}

/// Every `crate::` path in one file: whole `use crate::...;` trees, then paths in code.
fn imports(module: &str, src: &str) -> Vec<Import> {
    let code = code_only(src);
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut covered = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("use crate::") {
        let start = from + at;
        let end = start + code[start..].find(';').expect("use ends with ;");
        let mut paths = Vec::new();
        expand("", &code[start + "use crate::".len()..end], &mut paths);
        for path in paths {
            out.push(Import {
                from: module.to_string(),
                path,
                line: line_of(start),
            });
        }
        covered.push(start..end);
        from = end;
    }
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let preceded = code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if preceded || covered.iter().any(|r| r.contains(&start)) {
            continue;
        }
        let path: String = code[from..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(Import {
            from: module.to_string(),
            path: path.trim_end_matches(':').to_string(),
            line: line_of(start),
        });
    }
    out
}

/// The longest module that `path` names (an item's path resolves to its module).
fn resolve<'a>(modules: &'a BTreeSet<String>, path: &str) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| modules.get(&parts[..n].join("::")))
}

fn stage(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or("");
    STAGES.iter().position(|s| *s == top)
}

/// Edges from a module to the modules it imports, each with one place that makes it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph(modules: &BTreeSet<String>, imports: &[(String, Import)]) -> (Graph, Vec<String>) {
    let mut g = Graph::new();
    let mut unresolved = Vec::new();
    for (file, imp) in imports {
        let Some(to) = resolve(modules, &imp.path) else {
            unresolved.push(format!("{file}:{}: crate::{}", imp.line, imp.path));
            continue;
        };
        let helper = |m: &str| ANY_STAGE.contains(&m.split("::").next().unwrap_or(""));
        if *to == imp.from || to.is_empty() || helper(to) || helper(&imp.from) {
            continue;
        }
        g.entry(imp.from.clone())
            .or_default()
            .entry(to.clone())
            .or_insert_with(|| format!("{file}:{}: crate::{}", imp.line, imp.path));
    }
    (g, unresolved)
}

/// Imports from a later stage into an earlier one.
fn upward(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, tos) in g {
        for (to, at) in tos {
            if let (Some(a), Some(b)) = (stage(from), stage(to))
                && b > a
            {
                out.push(format!(
                    "{from} ({}) imports {to} ({}): {at}",
                    STAGES[a], STAGES[b]
                ));
            }
        }
    }
    out
}

/// Every cycle's modules (strongly connected components with more than one module),
/// by Tarjan's algorithm.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.get(v).into_iter().flat_map(|t| t.keys()) {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn crate_imports() -> (BTreeSet<String>, Vec<(String, Import)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut all = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        // The binary is its own crate; it reaches the library as `sensor::`.
        if rel == Path::new("main.rs") {
            continue;
        }
        let module = module_of(rel);
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for imp in imports(&module, &text) {
            all.push((format!("src/{}", rel.display()), imp));
        }
        modules.insert(module);
    }
    (modules, all)
}

#[test]
fn no_cycle_and_no_upward_import() {
    let (modules, imports) = crate_imports();
    // The walk must have found the crate: every stage is a module.
    for s in STAGES {
        assert!(modules.contains(*s), "no module {s} in {modules:?}");
    }
    let (g, unresolved) = graph(&modules, &imports);
    assert!(
        unresolved.is_empty(),
        "crate:: paths naming no module:\n{}",
        unresolved.join("\n")
    );
    assert!(
        g.values().map(BTreeMap::len).sum::<usize>() > 30,
        "too few edges found: {g:#?}"
    );
    let up = upward(&g);
    let cyc = cycles(&g);
    assert!(
        up.is_empty() && cyc.is_empty(),
        "upward imports:\n{}\ncycles:\n{}",
        up.join("\n"),
        cyc.iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker itself finds what it is there to find.
#[test]
fn checker_finds_cycles_and_upward_imports() {
    let modules: BTreeSet<String> = [
        "kernel",
        "kernel::a",
        "kernel::b",
        "kernel::c",
        "enrich",
        "detect",
        "detect::x",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let files = [
        ("kernel::a", "use crate::kernel::b::{self, Thing as T};"),
        ("kernel::b", "fn f() { crate::kernel::c::go() }"),
        ("kernel::c", "use crate::{kernel::a::X, enrich};"),
        (
            "enrich",
            "// use crate::detect::x;\nconst S: &str = \"crate::detect::x\";",
        ),
        ("detect::x", "use crate::{enrich::*, kernel::{a, b::Y}};"),
    ];
    let imports: Vec<(String, Import)> = files
        .iter()
        .flat_map(|(m, src)| imports(m, src).into_iter().map(|i| (m.to_string(), i)))
        .collect();
    let (g, unresolved) = graph(&modules, &imports);
    assert!(unresolved.is_empty(), "{unresolved:?}");
    assert_eq!(
        cycles(&g),
        vec![vec!["kernel::a", "kernel::b", "kernel::c"]],
        "{g:#?}"
    );
    let up = upward(&g);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].starts_with("kernel::c (kernel) imports enrich (enrich)"),
        "{up:?}"
    );
    // Comments and strings are not imports; downward imports are fine.
    assert!(!g.contains_key("enrich"), "{g:#?}");
    assert_eq!(g["detect::x"].len(), 3, "{g:#?}");
}
