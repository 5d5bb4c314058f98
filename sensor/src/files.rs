//! The files the agent writes as root (output, rotated files, recordings, the ledger): never
//! through a symlink, temp files always new, and never in a directory another user can write to
//! (as sshd's StrictModes), so no local user can redirect a root write or swap a file under it.
use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// Creates `dir` (0700) when missing, then checks it is safe to write in (`check_dir`).
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    check_dir(dir)
}

/// Refuses a directory that another user could write to, or one whose ancestors another user
/// could replace: each must belong to root (or to us) and not be group- or world-writable. An
/// ancestor with the sticky bit (/tmp) is accepted when the entry below it is ours, since then
/// nobody else can rename or remove it.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot resolve a relative path")?
            .join(dir)
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut current: Option<PathBuf> = Some(dir.clone());
    let mut child_is_ours = true;
    while let Some(path) = current {
        let metadata =
            fs::symlink_metadata(&path).with_context(|| format!("cannot inspect {}", path.display()))?;
        let owner_ok = metadata.uid() == 0 || metadata.uid() == me;
        let writable_by_others = metadata.mode() & 0o022 != 0;
        let sticky = metadata.mode() & 0o1000 != 0;
        if metadata.file_type().is_symlink() && path == dir {
            bail!("{} is a symbolic link; give the real directory", path.display());
        }
        let is_target = path == dir;
        if !owner_ok || writable_by_others && (is_target || !(sticky && child_is_ours)) {
            bail!(
                "{} can be written by other users (owner uid {}, mode {:o}): refusing to write {} there",
                path.display(),
                metadata.uid(),
                metadata.mode() & 0o7777,
                dir.display()
            );
        }
        child_is_ours = owner_ok;
        current = path.parent().map(Path::to_path_buf);
    }
    Ok(())
}

/// Opens `path` for appending (created 0600), refusing a symlink.
pub fn open_append(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_private_dir(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open {} (a symbolic link is refused)", path.display()))
}

/// Creates `path` anew (0600; an existing file is replaced, a symlink refused).
pub fn create_new(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_private_dir(dir)?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link: refusing to write it", path.display())
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?,
        Err(_) => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Replaces `path` with `bytes` atomically and durably: a new temp file (O_EXCL), fsync, rename,
/// fsync of the directory.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&temp);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    let written = out
        .write_all(bytes)
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()));
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn writable_directories_and_symlinks_are_refused() {
        let base = std::env::temp_dir().join(format!("bw-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        ensure_private_dir(&base.join("state")).unwrap();
        assert_eq!(
            fs::metadata(base.join("state")).unwrap().permissions().mode() & 0o777,
            0o700
        );
        replace_atomically(&base.join("state/ledger.json"), b"{}").unwrap();
        assert_eq!(fs::read(base.join("state/ledger.json")).unwrap(), b"{}");
        fs::create_dir_all(base.join("open")).unwrap();
        fs::set_permissions(base.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
        let err = open_append(&base.join("open/events.jsonl")).unwrap_err();
        assert!(
            format!("{err:#}").contains("can be written by other users"),
            "{err:#}"
        );
        std::os::unix::fs::symlink("/etc/passwd", base.join("state/link")).unwrap();
        assert!(open_append(&base.join("state/link")).is_err());
        assert!(create_new(&base.join("state/link")).is_err());
        assert_eq!(
            fs::read_link(base.join("state/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
