//! `cargo xtask layers`: the agent's house rules, checked from its own `use` lines. Every
//! import between files of `sensor/src` is read (test-only code left out); the check fails on
//! an import circle, on an import a layer must never make (`NEVER`), and on a file whose
//! non-test part is over `MAX_FILE_LINES`. docs/design.md draws the layers.
mod source;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

use self::source::{scan, Scan};

/// The parts of the house, by path under `sensor/src` (the longest prefix decides). Every file
/// is on one: a new file is placed here when it is made.
const PARTS: &[(&str, &[&str])] = &[
    (
        "wiring",
        &[
            "agent.rs",
            "replay.rs",
            "engine.rs",
            "recording.rs",
            "config.rs",
            "metrics.rs",
            "connections.rs",
            "cli.rs",
            "main.rs",
            "lib.rs",
        ],
    ),
    ("detect", &["detect/"]),
    ("output", &["output/"]),
    (
        "host",
        &[
            "host/",
            "daemons.rs",
            "process_table.rs",
            "existing.rs",
            "procfs.rs",
            "daemon_config.rs",
        ],
    ),
    ("docker", &["docker/"]),
    ("kernel", &["kernel/", "decode.rs", "watch.rs"]),
    ("protocol", &["protocol/", "redact.rs"]),
    ("model", &["model/"]),
    (
        "utility",
        &["clock.rs", "files.rs", "worker.rs", "notify.rs", "saferead.rs"],
    ),
];

/// (from, to, why): no file of `from` may import a file of `to`. `*` is every other part.
const NEVER: &[(&str, &str, &str)] = &[
    ("output", "detect", "sinks know no rules"),
    ("detect", "output", "rules know no sinks"),
    ("host", "detect", "the system view knows no rules"),
    ("host", "output", "the system view knows no writer"),
    ("protocol", "detect", "decoders know no rules"),
    ("output", "host", "a view is data, it reads no /proc"),
    (
        "model",
        "*",
        "the model is plain data at the bottom and imports nothing of ours",
    ),
    (
        "utility",
        "*",
        "utilities are leaves: they import only each other",
    ),
];

pub const MAX_FILE_LINES: usize = 600;

pub fn check() -> anyhow::Result<()> {
    let root = crate::build::workspace_root().join("sensor/src");
    let house = House::read(&root)?;
    let problems = house.problems();
    if !problems.is_empty() {
        bail!(
            "the house rules are broken (docs/design.md, \"The house in layers\"):\n  {}",
            problems.join("\n  ")
        );
    }
    let (largest, lines) = house
        .non_test_lines
        .iter()
        .max_by_key(|(_, lines)| **lines)
        .map(|(file, lines)| (file.as_str(), *lines))
        .unwrap_or_default();
    println!(
        "xtask: layers: {} files, {} imports between them, no circle, {} rules kept, largest {largest} ({lines} lines)",
        house.files.len(),
        house.imports.values().map(BTreeSet::len).sum::<usize>(),
        NEVER.len(),
    );
    Ok(())
}

/// The files of `sensor/src` (paths relative to it) and which file imports which.
pub struct House {
    files: BTreeSet<String>,
    imports: BTreeMap<String, BTreeSet<String>>,
    non_test_lines: BTreeMap<String, usize>,
}

impl House {
    pub fn read(root: &Path) -> anyhow::Result<Self> {
        let mut sources = BTreeMap::new();
        for path in rust_files(root)? {
            let relative = path
                .strip_prefix(root)
                .context("a file outside the tree")?
                .to_string_lossy()
                .into_owned();
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            sources.insert(relative, text);
        }
        Ok(Self::from_sources(&sources))
    }

    /// From file texts by relative path (`detect/mod.rs`).
    pub fn from_sources(sources: &BTreeMap<String, String>) -> Self {
        let scanned: BTreeMap<&str, Scan> = sources
            .iter()
            .map(|(file, text)| (file.as_str(), scan(&module_of(file), text)))
            .collect();
        // Files only a `#[cfg(test)] mod x;` declares are tests, not rooms of the house.
        let test_only: BTreeSet<String> = scanned
            .iter()
            .flat_map(|(file, scan)| {
                scan.test_modules
                    .iter()
                    .filter_map(move |name| child_file(file, name, sources))
            })
            .collect();
        let mut modules: HashMap<Vec<String>, String> = HashMap::new();
        for (file, scan) in &scanned {
            modules.insert(module_of(file), file.to_string());
            for inline in &scan.inline_modules {
                modules.insert(inline.clone(), file.to_string());
            }
        }
        let files: BTreeSet<String> = scanned
            .keys()
            .filter(|f| !test_only.contains(**f))
            .map(|f| f.to_string())
            .collect();
        let mut imports = BTreeMap::new();
        let mut non_test_lines = BTreeMap::new();
        for file in &files {
            let scan = &scanned[file.as_str()];
            let targets: BTreeSet<String> = scan
                .paths
                .iter()
                .filter_map(|path| resolve(path, &modules))
                .filter(|target| target != file && files.contains(target))
                .collect();
            imports.insert(file.clone(), targets);
            non_test_lines.insert(file.clone(), scan.non_test_lines);
        }
        Self {
            files,
            imports,
            non_test_lines,
        }
    }

    /// Every rule broken, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for circle in self.circles() {
            let ties: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    self.imports[from]
                        .iter()
                        .filter(|to| circle.contains(*to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            problems.push(format!(
                "import circle of {} files: {}",
                circle.len(),
                ties.join(", ")
            ));
        }
        for file in self.files.iter().filter(|f| part_of(f).is_none()) {
            problems.push(format!(
                "{file} is on no part of the house (xtask/src/layers.rs, PARTS)"
            ));
        }
        for (from, to, why) in NEVER {
            for file in self.files.iter().filter(|f| part_of(f) == Some(*from)) {
                for reached in &self.imports[file] {
                    let Some(part) = part_of(reached) else { continue };
                    if part != *from && (*to == "*" || part == *to) {
                        problems.push(format!(
                            "{file} imports {reached}: {from} never reaches {part} ({why})"
                        ));
                    }
                }
            }
        }
        for (file, lines) in &self.non_test_lines {
            if *lines > MAX_FILE_LINES {
                problems.push(format!(
                    "{file} has {lines} lines outside its tests (at most {MAX_FILE_LINES}: split it by concern)"
                ));
            }
        }
        problems
    }

    /// Groups of files that import each other in a loop (Tarjan's strongly connected
    /// components of more than one file).
    pub fn circles(&self) -> Vec<BTreeSet<String>> {
        struct Walk<'a> {
            house: &'a House,
            index: HashMap<&'a str, usize>,
            low: HashMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<BTreeSet<String>>,
        }
        impl<'a> Walk<'a> {
            fn visit(&mut self, file: &'a str) {
                let n = self.index.len();
                self.index.insert(file, n);
                self.low.insert(file, n);
                self.stack.push(file);
                self.on_stack.insert(file);
                for next in &self.house.imports[file] {
                    let next = next.as_str();
                    if !self.index.contains_key(next) {
                        self.visit(next);
                        let low = self.low[file].min(self.low[next]);
                        self.low.insert(file, low);
                    } else if self.on_stack.contains(next) {
                        let low = self.low[file].min(self.index[next]);
                        self.low.insert(file, low);
                    }
                }
                if self.low[file] == self.index[file] {
                    let mut component = BTreeSet::new();
                    while let Some(member) = self.stack.pop() {
                        self.on_stack.remove(member);
                        component.insert(member.to_string());
                        if member == file {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        self.found.push(component);
                    }
                }
            }
        }
        let mut walk = Walk {
            house: self,
            index: HashMap::new(),
            low: HashMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for file in &self.files {
            if !walk.index.contains_key(file.as_str()) {
                walk.visit(file);
            }
        }
        walk.found
    }
}

fn part_of(file: &str) -> Option<&'static str> {
    PARTS
        .iter()
        .flat_map(|(part, prefixes)| prefixes.iter().map(move |prefix| (*part, *prefix)))
        .filter(|(_, prefix)| {
            if prefix.ends_with('/') {
                file.starts_with(prefix)
            } else {
                file == *prefix
            }
        })
        .max_by_key(|(_, prefix)| prefix.len())
        .map(|(part, _)| part)
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    Ok(found)
}

/// The module path of a file: `detect/mod.rs` is `detect`, `detect/ledger.rs` is
/// `detect::ledger`, `lib.rs` and `main.rs` are the crate root.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The file of child module `name` declared in `file`.
fn child_file(file: &str, name: &str, sources: &BTreeMap<String, String>) -> Option<String> {
    let module = module_of(file);
    let base = module.join("/");
    let prefix = if base.is_empty() {
        String::new()
    } else {
        format!("{base}/")
    };
    [format!("{prefix}{name}.rs"), format!("{prefix}{name}/mod.rs")]
        .into_iter()
        .find(|candidate| sources.contains_key(candidate))
}

/// The file a path names: the longest prefix of it that is a module.
fn resolve(path: &[String], modules: &HashMap<Vec<String>, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .find_map(|len| modules.get(&path[..len]).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn house(files: &[(&str, &str)]) -> House {
        let sources = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        House::from_sources(&sources)
    }

    fn imports(house: &House, file: &str) -> Vec<String> {
        house.imports[file].iter().cloned().collect()
    }

    #[test]
    fn comments_strings_and_test_modules_are_not_imports() {
        let house = house(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n#[cfg(test)]\nmod t;\n"),
            (
                "a.rs",
                "// use crate::b;\nconst S: &str = \"crate::b::X\";\nconst R: &str = r#\"crate::b\"#;\nfn f<'a>(x: &'a str) -> [char; 3] { ['c', '\\\\', '\\''] }\n#[cfg(test)]\nmod tests {\n    use crate::b::X;\n}\n",
            ),
            ("b.rs", "use crate::c::Y; // and crate::a\n"),
            ("c.rs", "pub struct Y;\n"),
            ("t.rs", "use crate::a;\n"),
        ]);
        assert!(
            imports(&house, "a.rs").is_empty(),
            "{:?}",
            imports(&house, "a.rs")
        );
        assert_eq!(imports(&house, "b.rs"), ["c.rs"]);
        assert!(!house.files.contains("t.rs"), "a test-only file is no room");
        assert_eq!(
            house.non_test_lines["a.rs"], 5,
            "the test module's lines do not count"
        );
    }

    #[test]
    fn relative_paths_resolve_from_their_module_and_inline_modules() {
        let house = house(&[
            ("lib.rs", "pub mod d;\npub mod m;\n"),
            ("m.rs", "pub struct M;\n"),
            ("d/mod.rs", "mod x;\nmod y;\nuse self::x::X;\n"),
            ("d/x.rs", "use super::y::Y;\npub struct X;\n"),
            (
                "d/y.rs",
                "pub struct Y;\npub(super) fn h() {}\npub(in crate::d) fn i() {}\nmod inner {\n    use super::Y;\n    fn f() { super::super::x::g(); crate::m::M; }\n}\n",
            ),
        ]);
        assert_eq!(imports(&house, "d/mod.rs"), ["d/x.rs"]);
        assert_eq!(imports(&house, "d/x.rs"), ["d/y.rs"]);
        assert_eq!(imports(&house, "d/y.rs"), ["d/x.rs", "m.rs"]);
    }

    #[test]
    fn circles_and_broken_nevers_are_found() {
        let house = house(&[
            (
                "lib.rs",
                "pub mod output;\npub mod detect;\npub mod model;\npub mod files;\npub mod stray;\n",
            ),
            ("output/mod.rs", "mod queue;\nuse queue::Queue;\n"),
            (
                "output/queue.rs",
                "use crate::detect::rules::Severity;\npub struct Queue;\n",
            ),
            ("files.rs", "pub fn write() {}\n"),
            ("detect/mod.rs", "pub mod rules;\nuse crate::output;\n"),
            ("detect/rules.rs", "use super::Detector;\npub enum Severity {}\n"),
            ("model/mod.rs", "use crate::files;\n"),
            ("stray.rs", "pub fn f() {}\n"),
        ]);
        let problems = house.problems();
        assert!(
            problems.iter().any(|p| p
                == "import circle of 4 files: detect/mod.rs -> output/mod.rs, detect/rules.rs -> detect/mod.rs, output/mod.rs -> output/queue.rs, output/queue.rs -> detect/rules.rs"),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(
                |p| p.starts_with("output/queue.rs imports detect/rules.rs: output never reaches detect")
            ),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("model/mod.rs imports files.rs: model never reaches utility")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("stray.rs is on no part")),
            "{problems:#?}"
        );
        let clean = self::house(&[
            ("lib.rs", "pub mod output;\npub mod model;\n"),
            ("output/mod.rs", "use crate::model::Line;\n"),
            ("model/mod.rs", "pub struct Line;\n"),
        ]);
        assert!(clean.problems().is_empty(), "{:?}", clean.problems());
    }

    #[test]
    fn a_long_file_is_reported() {
        let long = "fn f() {}\n".repeat(MAX_FILE_LINES + 1);
        let house = house(&[("lib.rs", "pub mod big;\n"), ("big.rs", &long)]);
        assert!(house
            .problems()
            .iter()
            .any(|p| p.starts_with("big.rs has 601 lines")));
    }

    /// The agent as it stands keeps every rule.
    #[test]
    fn the_agent_keeps_the_house_rules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sensor/src");
        let house = House::read(&root).unwrap();
        assert!(house.files.len() > 50, "read the tree: {}", house.files.len());
        assert!(house.imports["detect/mod.rs"].contains("model/detection.rs"));
        assert_eq!(house.problems(), Vec::<String>::new());
    }
}
