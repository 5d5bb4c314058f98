//! Reading one Rust file for what it imports: comments and literals blanked, test-only items
//! cut, `use` trees expanded, relative paths made absolute.
/// What one file says about imports, outside its test-only code.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    /// Absolute module paths it names (`use` trees expanded, `crate::`, `super::`, `self::`).
    pub paths: Vec<Vec<String>>,
    /// Child modules declared `#[cfg(test)] mod x;`.
    pub test_modules: Vec<String>,
    /// Absolute paths of the inline `mod x { ... }` modules it holds.
    pub inline_modules: Vec<Vec<String>>,
    pub non_test_lines: usize,
}

/// Reads one file: comments and literals blanked, test-only items cut, then every path that
/// starts at `crate`, `super` or `self`, resolved against the module it is written in.
pub fn scan(module: &[String], text: &str) -> Scan {
    let code = blank_comments_and_literals(text);
    let chars: Vec<char> = code.chars().collect();
    let mut found = Scan::default();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut test_lines = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            depth += 1;
            i += 1;
            continue;
        }
        if c == '}' {
            depth = depth.saturating_sub(1);
            if inline.last().is_some_and(|(_, at)| *at == depth) {
                inline.pop();
            }
            i += 1;
            continue;
        }
        if c == '#' && starts_with(&chars, i, "#[cfg(test)]") {
            let end = item_end(&chars, i + "#[cfg(test)]".len());
            let item: String = chars[i..end].iter().collect();
            if let Some(name) = declared_module(&item).filter(|_| item.trim_end().ends_with(';')) {
                found.test_modules.push(name);
            }
            test_lines += item.matches('\n').count();
            i = end;
            continue;
        }
        if !c.is_alphabetic() && c != '_' || i > 0 && is_ident(chars[i - 1]) {
            i += 1;
            continue;
        }
        let word = ident_at(&chars, i);
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        match word.as_str() {
            "mod" => {
                let rest: String = chars[i..item_end(&chars, i)].iter().collect();
                if let Some(name) = declared_module(&rest) {
                    if rest.trim_end().ends_with('{') || rest.contains('{') {
                        let mut path = here.clone();
                        path.push(name.clone());
                        found.inline_modules.push(path);
                        inline.push((name, depth));
                        depth += 1;
                        i += rest.find('{').map_or(rest.len(), |at| at + 1);
                        continue;
                    }
                }
                i += word.len();
            }
            "use" => {
                let end = (i..chars.len()).find(|&j| chars[j] == ';').unwrap_or(chars.len());
                let tree: String = chars[i + 3..end].iter().collect();
                for path in expand_tree(&tree) {
                    // A bare first name is a child module of this one, or another crate (which
                    // then resolves to this very file and is dropped).
                    let bare = || here.iter().chain(&path).cloned().collect();
                    found.paths.push(absolute(&here, &path).unwrap_or_else(bare));
                }
                i = end;
            }
            "crate" | "super" | "self" if in_visibility(&chars, i) => i += word.len(),
            "crate" | "super" | "self" => {
                let mut end = i;
                while end < chars.len() && (is_ident(chars[end]) || chars[end] == ':') {
                    end += 1;
                }
                let path: Vec<String> = chars[i..end]
                    .iter()
                    .collect::<String>()
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                found.paths.extend(absolute(&here, &path));
                i = end;
            }
            _ => i += word.len(),
        }
    }
    found.non_test_lines = text.lines().count().saturating_sub(test_lines);
    found
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the word at `at` is inside a visibility (`pub(super)`, `pub(in crate::x)`), which
/// names no import.
fn in_visibility(chars: &[char], at: usize) -> bool {
    let before: String = chars[..at]
        .iter()
        .rev()
        .take(24)
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    let before: String = before.split_whitespace().collect();
    before.ends_with("pub(") || before.ends_with("pub(in")
}

fn starts_with(chars: &[char], at: usize, word: &str) -> bool {
    word.chars()
        .enumerate()
        .all(|(k, w)| chars.get(at + k) == Some(&w))
}

fn ident_at(chars: &[char], at: usize) -> String {
    chars[at..].iter().take_while(|c| is_ident(**c)).collect()
}

/// `name` of `mod name;`, `pub mod name {`, `pub(crate) mod name;` in an item's text.
fn declared_module(item: &str) -> Option<String> {
    let words: Vec<&str> = item
        .split(|c: char| !is_ident(c))
        .filter(|w| !w.is_empty())
        .collect();
    let at = words.iter().position(|w| *w == "mod")?;
    words.get(at + 1).map(|name| name.to_string())
}

/// Where the item starting at `from` ends: after its `;`, or after the block its first `{`
/// opens (attributes in between are part of it).
fn item_end(chars: &[char], from: usize) -> usize {
    let mut depth = 0usize;
    let mut brackets = 0usize;
    for (j, c) in chars.iter().enumerate().skip(from) {
        match c {
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            ';' if depth == 0 && brackets == 0 => return j + 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    chars.len()
}

/// A `use` tree (`super::{a, b::{c, self}, d as e}`) as the paths it names.
fn expand_tree(tree: &str) -> Vec<Vec<String>> {
    fn walk(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim_matches(',');
        if tree.is_empty() {
            return;
        }
        if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            let mut depth = 0;
            let mut start = 0;
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        walk(prefix, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            walk(prefix, &inner[start..], out);
            return;
        }
        match tree.find("::{") {
            Some(at) if !tree[..at].contains('{') => {
                let mut longer = prefix.to_vec();
                longer.extend(tree[..at].split("::").map(String::from));
                walk(&longer, &tree[at + 2..], out);
            }
            _ => {
                let path = tree.split('@').next().unwrap_or(tree);
                let mut full = prefix.to_vec();
                full.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
                if full.len() > 1 && full.last().is_some_and(|last| last == "self") {
                    full.pop();
                }
                out.push(full);
            }
        }
    }
    // White space goes; `x as y` keeps its rename apart as `x@y`.
    let tree: String = tree
        .split_whitespace()
        .map(|word| if word == "as" { "@" } else { word })
        .collect();
    let mut out = Vec::new();
    walk(&[], &tree, &mut out);
    out
}

/// A path as written in module `here`, made absolute from the crate root; `None` for paths
/// into other crates.
fn absolute(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let (mut base, rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (here.to_vec(), &path[1..]),
        Some("super") => (here.to_vec(), path),
        _ => return None,
    };
    let mut rest = rest;
    while rest.first().is_some_and(|p| p == "super") {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The text with comments and the insides of string and char literals replaced by spaces
/// (new lines kept), so that neither is read as code.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0
                || !is_ident(chars[i - 1])
                || chars[i - 1] == 'b' && (i < 2 || !is_ident(chars[i - 2])))
        {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let start = i + 2 + hashes;
            let end = (start..chars.len())
                .find(|&j| starts_with(&chars, j, &close))
                .map_or(chars.len(), |j| j + close.len());
            out.extend(chars[i..end].iter().map(|c| blank(*c)));
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let skip = if chars[i] == '\\' { 2 } else { 1 };
                for k in 0..skip {
                    if let Some(c) = chars.get(i + k) {
                        out.push(blank(*c));
                    }
                }
                i += skip;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'', '\u{1F600}'), not a lifetime ('a).
            let close = match (next, chars.get(i + 2)) {
                (Some('\\'), Some('u')) => (i + 3..chars.len()).find(|&j| chars[j] == '}').map(|j| j + 1),
                (Some('\\'), Some('x')) => Some(i + 5),
                (Some('\\'), Some(_)) => Some(i + 3),
                (Some(_), Some('\'')) => Some(i + 2),
                _ => None,
            };
            let end = close.filter(|&j| chars.get(j) == Some(&'\''));
            match end {
                Some(end) => {
                    out.extend(std::iter::repeat_n(' ', end + 1 - i));
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_to_every_path() {
        assert_eq!(
            expand_tree("super::{a, b::{c, self},\n    d::e as f}"),
            [
                vec!["super", "a"],
                vec!["super", "b", "c"],
                vec!["super", "b"],
                vec!["super", "d", "e"],
            ]
        );
        assert_eq!(
            expand_tree("crate::{x::Y,z}"),
            [vec!["crate", "x", "Y"], vec!["crate", "z"]]
        );
    }
}
