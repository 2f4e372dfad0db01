//! The layout rules of the README's Layout section, checked on the source text (this test
//! does not link bearerd):
//! - no import cycle: between the rooms of `src/` (its top-level modules), nor between the
//!   modules inside any room;
//! - no `Result<_, String>` outside `main.rs`: errors are typed at module boundaries;
//! - no function longer than 100 lines.
//!
//! `cargo test --test layout` runs it; a failure names the cycle, the signature or the
//! function.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its path from the crate root (`["token", "grant"]`), one per file or folder.
type Module = Vec<String>;

struct SourceFile {
    path: PathBuf,
    /// The module the file is (`src/token/grant/mod.rs` and `src/token/grant.rs` are both
    /// `token::grant`).
    module: Module,
    /// The text without comments, strings or the trailing `#[cfg(test)]` module.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn module_of(path: &Path) -> Module {
    let rel = path.strip_prefix(src_dir()).expect("under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Comments and string literals blanked (so a path in a doc comment or a message is not
/// an import), and everything from a `#[cfg(test)]` module on dropped.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            i += end;
        } else if rest.starts_with("r\"") || rest.starts_with("r#\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
            out.push_str("\"\"");
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            i += end;
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            let end = (j + 1).min(rest.len());
            out.push_str("\"\"");
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            i += end;
        } else if rest.starts_with("'") && rest.len() > 3 && &rest[2..3] == "'" {
            // A char literal such as '"' or '{'.
            out.push_str("' '");
            i += 3;
        } else if let Some(escaped) = rest.strip_prefix("'\\") {
            let end = escaped.find('\'').map_or(rest.len(), |e| e + 3);
            out.push_str("' '");
            i += end;
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn sources() -> Vec<SourceFile> {
    let mut paths = Vec::new();
    rust_files(&src_dir(), &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            SourceFile {
                module: module_of(&path),
                code: code_of(&text),
                path,
            }
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path a file names that starts with `crate` or `super`, with `use` groups
/// (`use crate::{a, b::{c, d}}`) expanded, as segments.
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = |w: &str| {
            let wc: Vec<char> = w.chars().collect();
            chars[i..].starts_with(&wc)
                && (i == 0 || !is_ident(chars[i - 1]))
                && chars.get(i + wc.len()).is_some_and(|c| *c == ':')
        };
        if starts("crate") || starts("super") {
            let (paths, end) = parse_tree(&chars, i, Vec::new());
            out.extend(paths);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses `a::b::{c, d::e}` from `at`; returns the expanded paths and where it ended.
fn parse_tree(chars: &[char], mut at: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    loop {
        while chars.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if chars.get(at) == Some(&'{') {
            at += 1;
            let mut all = Vec::new();
            loop {
                while chars
                    .get(at)
                    .is_some_and(|c| c.is_whitespace() || *c == ',')
                {
                    at += 1;
                }
                match chars.get(at) {
                    None => return (all, at),
                    Some('}') => return (all, at + 1),
                    _ => {}
                }
                let (paths, end) = parse_tree(chars, at, path.clone());
                all.extend(paths);
                if end <= at {
                    return (all, at + 1);
                }
                at = end;
            }
        }
        let start = at;
        while chars.get(at).is_some_and(|c| is_ident(*c)) {
            at += 1;
        }
        if at == start {
            return (vec![path], at);
        }
        path.push(chars[start..at].iter().collect());
        if chars.get(at) == Some(&':') && chars.get(at + 1) == Some(&':') {
            at += 2;
        } else {
            return (vec![path], at);
        }
    }
}

/// The module a named path lands in: the longest prefix that is a module of the crate.
fn resolve(from: &SourceFile, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut base: Module = Vec::new();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => rest = &rest[1..],
        Some("super") => {
            // `super` of a file module is its parent; each further `super` goes one up.
            base = from.module.clone();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut found = None;
    let mut m = base;
    if modules.contains(&m) {
        found = Some(m.clone());
    }
    for seg in rest {
        m.push(seg.clone());
        if modules.contains(&m) {
            found = Some(m.clone());
        } else {
            break;
        }
    }
    found
}

/// Edges between modules: `from` uses something in `to`.
type Graph = BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>;

fn import_graph() -> (Vec<SourceFile>, Graph) {
    let files = sources();
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    let mut graph = Graph::new();
    for f in &files {
        for path in paths_named(&f.code) {
            if let Some(to) = resolve(f, &path, &modules) {
                let file = f.path.strip_prefix(src_dir()).unwrap_or(&f.path);
                graph
                    .entry(f.module.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(file.display().to_string());
            }
        }
    }
    (files, graph)
}

/// The cycles among `nodes` (as the strongly connected components with more than one
/// node), where `edge(a)` lists what `a` imports.
fn cycles(
    nodes: &BTreeSet<Module>,
    edges: &BTreeMap<Module, BTreeSet<Module>>,
) -> Vec<Vec<Module>> {
    // Reachability by DFS from each node: small graphs, so simple beats clever.
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for next in edges.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Module, BTreeSet<Module>> =
        nodes.iter().map(|n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if done.contains(n) || !reaches[n].contains(n) {
            continue;
        }
        let component: Vec<Module> = nodes
            .iter()
            .filter(|m| reaches[n].contains(*m) && reaches[*m].contains(n))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        out.push(component);
    }
    out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The cycles among the children of `parent`: each file's imports taken up to the child of
/// `parent` they fall in. A parent's own file (its `mod.rs`) is the room's front and
/// declares the children: it is left out.
fn cycles_among_children(parent: &Module, graph: &Graph) -> Vec<String> {
    let child_of = |m: &Module| -> Option<Module> {
        (m.len() > parent.len() && m.starts_with(parent)).then(|| m[..=parent.len()].to_vec())
    };
    let mut nodes = BTreeSet::new();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut why: BTreeMap<(Module, Module), BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph {
        let Some(a) = child_of(from) else { continue };
        nodes.insert(a.clone());
        for (to, files) in tos {
            let Some(b) = child_of(to) else { continue };
            if a != b {
                nodes.insert(b.clone());
                edges.entry(a.clone()).or_default().insert(b.clone());
                why.entry((a.clone(), b))
                    .or_default()
                    .extend(files.iter().cloned());
            }
        }
    }
    cycles(&nodes, &edges)
        .into_iter()
        .map(|c| {
            let mut text = format!(
                "cycle: {}",
                c.iter().map(name).collect::<Vec<_>>().join(" <-> ")
            );
            for a in &c {
                for b in &c {
                    if let Some(files) = why.get(&(a.clone(), b.clone())) {
                        let files: Vec<&str> = files.iter().map(String::as_str).collect();
                        text.push_str(&format!(
                            "\n  {} -> {} in {}",
                            name(a),
                            name(b),
                            files.join(", ")
                        ));
                    }
                }
            }
            text
        })
        .collect()
}

#[test]
fn no_import_cycle_between_rooms_or_between_the_modules_of_a_room() {
    let (files, graph) = import_graph();
    let mut parents: BTreeSet<Module> = BTreeSet::new();
    for f in &files {
        for n in 0..f.module.len() {
            parents.insert(f.module[..n].to_vec());
        }
    }
    let found: Vec<String> = parents
        .iter()
        .flat_map(|p| cycles_among_children(p, &graph))
        .collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The `Result<…>` types in `code` whose error is a bare `String`, with their line.
fn string_results(code: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = code[char_offset(&chars, i)..].find("Result<") {
        let start = i + code[char_offset(&chars, i)..][..at].chars().count();
        let open = start + "Result".len();
        i = open + 1;
        if start > 0 && is_ident(chars[start - 1]) {
            continue;
        }
        // The top-level arguments between the angle brackets; the error is the last one
        // (a trailing comma leaves an empty one after it).
        let (mut depth, mut from, mut j) = (0i32, open + 1, open);
        let mut args: Vec<String> = Vec::new();
        while j < chars.len() {
            match chars[j] {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => {
                    args.push(
                        chars[from..j]
                            .iter()
                            .filter(|c| !c.is_whitespace())
                            .collect(),
                    );
                    from = j + 1;
                }
                _ => {}
            }
            j += 1;
        }
        let end = j.min(chars.len());
        args.push(
            chars[from..end]
                .iter()
                .filter(|c| !c.is_whitespace())
                .collect(),
        );
        args.retain(|a| !a.is_empty());
        let error = args.last().map(String::as_str).unwrap_or_default();
        if args.len() == 2 && matches!(error, "String" | "std::string::String") {
            let line = chars[..start].iter().filter(|c| **c == '\n').count() + 1;
            let text: String = chars[start..=j.min(chars.len() - 1)].iter().collect();
            found.push((line, text.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    }
    found
}

fn char_offset(chars: &[char], n: usize) -> usize {
    chars[..n.min(chars.len())]
        .iter()
        .map(|c| c.len_utf8())
        .sum()
}

#[test]
fn no_result_with_a_string_error_outside_main() {
    let mut found = Vec::new();
    for f in sources() {
        if f.module.is_empty() && f.path.ends_with("main.rs") {
            continue;
        }
        for (line, text) in string_results(&f.code) {
            found.push(format!("{}:{line}: {text}", f.path.display()));
        }
    }
    assert!(
        found.is_empty(),
        "{} Result<_, String>:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn no_function_over_100_lines() {
    let mut found = Vec::new();
    for f in sources() {
        let lines: Vec<&str> = f.code.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let Some(name) = fn_name(lines[i]) else {
                i += 1;
                continue;
            };
            let (mut depth, mut opened, mut end) = (0i32, false, i);
            for (j, line) in lines.iter().enumerate().skip(i) {
                for c in line.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                end = j;
                if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                    break;
                }
            }
            let length = end - i + 1;
            if length > 100 {
                found.push(format!(
                    "{}:{}: fn {name} is {length} lines",
                    f.path.display(),
                    i + 1
                ));
            }
            i += 1;
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

fn fn_name(line: &str) -> Option<&str> {
    let at = line.find("fn ")?;
    let before = line[..at].trim();
    let keywords_only = before.split_whitespace().all(|w| {
        matches!(w, "pub" | "async" | "const" | "unsafe" | "extern") || w.starts_with("pub(")
    });
    if !keywords_only {
        return None;
    }
    let rest = &line[at + 3..];
    let end = rest.find(|c: char| !is_ident(c))?;
    (end > 0).then(|| &rest[..end])
}

#[test]
fn the_checker_sees_a_cycle_and_a_string_error_when_there_is_one() {
    // The rules above pass only if the parsing finds imports at all: a checker that sees
    // nothing would pass everything.
    let code = code_of("use crate::a::{b, c::{d, e}};\nfn f() { let _ = super::x::y(); }\n// crate::not::this\n\"crate::nor::this\"");
    let paths: Vec<String> = paths_named(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "crate::a::b",
            "crate::a::c::d",
            "crate::a::c::e",
            "super::x::y"
        ]
    );
    let (files, graph) = import_graph();
    assert!(files.len() > 50, "{} files", files.len());
    let token = vec!["token".to_string()];
    let proxy = vec!["proxy".to_string()];
    assert!(graph
        .get(&proxy)
        .is_some_and(|tos| tos.keys().any(|m| m.starts_with(&token))));
    let mut edges = BTreeMap::new();
    edges.insert(
        vec!["a".to_string()],
        BTreeSet::from([vec!["b".to_string()]]),
    );
    edges.insert(
        vec!["b".to_string()],
        BTreeSet::from([vec!["a".to_string()]]),
    );
    let nodes: BTreeSet<Module> = edges.keys().cloned().collect();
    assert_eq!(cycles(&nodes, &edges).len(), 1);
    let typed = "fn a() -> Result<Vec<(u8, String)>, Error> {}\nfn b() -> Result<String, E> {}";
    assert!(string_results(typed).is_empty());
    let untyped =
        "fn a() -> Result<\n    Vec<u8>,\n    String,\n> {}\ntype R = Result<(), String>;";
    assert_eq!(
        string_results(untyped).len(),
        2,
        "{:?}",
        string_results(untyped)
    );
}
