//! The house rules that the compiler does not check (rust-analyzer's `tidy.rs` shape):
//! - `src/lib.rs` declares every top-level module under a layer comment (`// L0 base` …), in
//!   order; a module imports only modules of lower layers, or of its own layer declared above it,
//!   so the module graph has no cycle;
//! - cross-module items come in through `use crate::…` lines, never as inline `crate::x::y`
//!   paths in code (tests excepted), so the graph can be read from the imports; a grouped
//!   `use crate::{…}` would hide its targets from this check and is refused;
//! - imports sit at the top of a file, never inside a function (`use crate::…` indented);
//! - only `process` spawns processes or reads the environment (`Command::new`, `env::var*`);
//! - no product file over 1,000 lines and no function over 100 (the rooms stay readable);
//! - only `deploy` knows the install kinds: `Install::` appears nowhere else but in `settings`
//!   (which parses them), so a new kind is added in `deploy` and nowhere above it.
//!
//! Each rule is checked on the real tree and, to show it can fail, on a small bad tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One top-level module: its layer and its position in `lib.rs`.
#[derive(Debug, Clone, Copy)]
struct Place {
    layer: u32,
    order: usize,
}

/// The layer table from `lib.rs`: `// L<n> …` comments followed by `pub mod x;` lines.
fn layer_table(lib: &str) -> Result<BTreeMap<String, Place>, String> {
    let mut table = BTreeMap::new();
    let mut layer = None;
    for (n, line) in lib.lines().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("// L") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() {
                layer = digits.parse().ok();
            }
        } else if let Some(name) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|r| r.strip_suffix(';'))
        {
            let Some(layer) = layer else {
                return Err(format!(
                    "lib.rs:{}: module {name} is declared before any `// L<n>` layer comment",
                    n + 1
                ));
            };
            let order = table.len();
            table.insert(name.to_string(), Place { layer, order });
        }
    }
    Ok(table)
}

/// The text of a file without its `#[cfg(test)]` tail (unit tests may reach anywhere).
fn without_tests(text: &str) -> &str {
    match text.find("\n#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Every `crate::<module>` a file names (in `use` lines or inline), with its line number.
fn crate_refs(text: &str) -> Vec<(usize, String, bool)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim_start();
        let is_use = trimmed.starts_with("use ") || trimmed.starts_with("pub use ");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == ':')
                && !name.is_empty()
            {
                out.push((n + 1, name, is_use));
            }
            rest = after;
        }
    }
    out
}

/// The rule violations in a tree: `files` maps a path under `src/` to its text.
fn violations(lib: &str, files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let table = match layer_table(lib) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for (path, text) in files {
        let Some(first) = path.components().next() else {
            continue;
        };
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let Some(here) = table.get(&module) else {
            problems.push(format!(
                "src/{}: module {module} is missing from lib.rs's layer table",
                path.display()
            ));
            continue;
        };
        let code = without_tests(text);
        let kinds_allowed = module == "deploy" || module == "settings";
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or("");
            if line.contains("use crate::{") {
                problems.push(format!(
                    "src/{}:{}: grouped import `use crate::{{…}}` (one `use crate::module::…` line per module)",
                    path.display(),
                    n + 1
                ));
            }
            if line.starts_with(char::is_whitespace) && line.trim_start().starts_with("use crate::")
            {
                problems.push(format!(
                    "src/{}:{}: import inside a function (imports go at the top of the file)",
                    path.display(),
                    n + 1
                ));
            }
            if module != "process"
                && ["Command::new", "env::var", "env::vars"]
                    .iter()
                    .any(|m| line.contains(m))
            {
                problems.push(format!(
                    "src/{}:{}: {module} spawns or reads the environment (only process does)",
                    path.display(),
                    n + 1
                ));
            }
            if !kinds_allowed && line.contains("Install::") {
                problems.push(format!(
                    "src/{}:{}: {module} branches on the install kind (only deploy knows the kinds: add a deploy function)",
                    path.display(),
                    n + 1
                ));
            }
        }
        for (line, target, is_use) in crate_refs(code) {
            if !is_use {
                problems.push(format!(
                    "src/{}:{line}: inline path crate::{target}::… (import it with `use crate::…` at the top)",
                    path.display()
                ));
            }
            if target == module {
                continue;
            }
            let Some(there) = table.get(&target) else {
                continue;
            };
            let down =
                there.layer < here.layer || (there.layer == here.layer && there.order < here.order);
            if !down {
                problems.push(format!(
                    "src/{}:{line}: {module} (L{}) imports {target} (L{}), which is not below it in lib.rs",
                    path.display(),
                    here.layer,
                    there.layer
                ));
            }
        }
    }
    problems
}

/// The most lines a product file and a product function may have.
const MAX_FILE_LINES: usize = 1000;
const MAX_FN_LINES: usize = 100;

/// Whether a trimmed line starts a function item (`pub(crate) async fn name(`…).
fn starts_fn(trimmed: &str) -> bool {
    let mut rest = trimmed;
    for word in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    rest.starts_with("fn ")
}

/// Files and functions over the limits, unit tests left out.
fn sizes(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in files {
        let code = without_tests(text);
        let lines: Vec<&str> = code.lines().collect();
        if lines.len() > MAX_FILE_LINES {
            problems.push(format!(
                "src/{}: {} lines (at most {MAX_FILE_LINES}: split it along its seams)",
                path.display(),
                lines.len()
            ));
        }
        for (start, line) in lines.iter().enumerate() {
            if !starts_fn(line.trim_start()) {
                continue;
            }
            let mut depth = 0i64;
            let mut opened = false;
            let mut end = start;
            for (n, l) in lines.iter().enumerate().skip(start) {
                let code = l.split("//").next().unwrap_or("");
                depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
                opened |= code.contains('{');
                end = n;
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            let length = end - start + 1;
            if length > MAX_FN_LINES {
                problems.push(format!(
                    "src/{}:{}: a function of {length} lines (at most {MAX_FN_LINES})",
                    path.display(),
                    start + 1
                ));
            }
        }
    }
    problems
}

#[test]
fn no_product_file_over_1000_lines_and_no_function_over_100() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = sizes(&read_tree(&src));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let long_fn = format!("pub async fn f() {{\n{}}}\n", "    x();\n".repeat(100));
    let long_file = "const X: u8 = 0;\n".repeat(1001);
    let bad: BTreeMap<PathBuf, String> = [("a.rs", long_fn), ("b.rs", long_file)]
        .into_iter()
        .map(|(p, t)| (PathBuf::from(p), t))
        .collect();
    let found = sizes(&bad);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("src/a.rs:1: a function of 102 lines")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("src/b.rs: 1001 lines")),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{found:?}");
}

fn read_tree(src: &Path) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src).expect("under src").to_path_buf();
                files.insert(rel, std::fs::read_to_string(&p).expect("read file"));
            }
        }
    }
    files
}

#[test]
fn modules_import_only_downwards_and_through_use_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let table = layer_table(&lib).expect("layer table");
    for layer in 0..=5 {
        assert!(
            table.values().any(|p| p.layer == layer),
            "lib.rs has no module in layer L{layer}"
        );
    }
    let problems = violations(&lib, &read_tree(&src));
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_rules_catch_an_upward_import_an_inline_path_and_a_missing_module() {
    let lib = "// L0 base\npub mod error;\n// L1 config\npub mod settings;\n// L5 interface\npub mod cli;\n";
    let files: BTreeMap<PathBuf, String> = [
        ("error.rs", "use crate::settings::Settings;\n"),
        ("settings/mod.rs", "fn f() { crate::error::chain(); }\n"),
        (
            "cli.rs",
            "use crate::settings::Settings;\nuse crate::error::chain;\n",
        ),
        ("stray.rs", "//! not declared\n"),
        (
            "state.rs",
            "#[cfg(test)]\nmod tests { use crate::cli::X; }\n",
        ),
        (
            "cli/status.rs",
            "use crate::{settings::Install, error::x};\nfn f(i: &Install) -> bool { matches!(i, Install::Binary) }\n",
        ),
        ("settings/raw.rs", "fn g() -> Install { Install::Binary }\n"),
        (
            "settings/cron.rs",
            "fn h() {\n    use crate::error::x;\n    let _ = std::env::var(\"HOME\");\n}\n",
        ),
    ]
    .into_iter()
    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
    .collect();
    let problems = violations(lib, &files);
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(
        has("src/error.rs:1: error (L0) imports settings (L1)"),
        "{problems:#?}"
    );
    assert!(
        has("src/settings/mod.rs:1: inline path crate::error"),
        "{problems:#?}"
    );
    assert!(
        has("src/stray.rs: module stray is missing"),
        "{problems:#?}"
    );
    assert!(
        has("src/state.rs: module state is missing"),
        "{problems:#?}"
    );
    assert!(has("src/cli/status.rs:1: grouped import"), "{problems:#?}");
    assert!(
        has("src/cli/status.rs:2: cli branches on the install kind"),
        "{problems:#?}"
    );
    assert!(
        has("src/settings/cron.rs:2: import inside a function"),
        "{problems:#?}"
    );
    assert!(
        has("src/settings/cron.rs:3: settings spawns or reads the environment"),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 8, "{problems:#?}");
    assert!(layer_table("pub mod x;\n").is_err());
}
