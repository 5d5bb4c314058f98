//! tracefs: where it is, and the field offsets of tracepoint records (they moved between kernel
//! versions, e.g. `comm` became a `__data_loc` in 6.x), read from the `format` files.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds the mounted tracefs, mounting it at /sys/kernel/tracing if it is absent.
pub fn locate_or_mount() -> anyhow::Result<PathBuf> {
    if let Some(found) = CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    let target = Path::new(CANDIDATES[0]);
    mount("tracefs", target, "tracefs").with_context(|| {
        format!(
            "tracefs is not mounted and mounting it failed; run `mount -t tracefs nodev {}`",
            target.display()
        )
    })?;
    if !target.join("events").is_dir() {
        bail!("tracefs mounted at {} has no events directory", target.display());
    }
    tracing::info!(path = %target.display(), "mounted tracefs");
    Ok(target.to_path_buf())
}

pub fn mount(source: &str, target: &Path, fstype: &str) -> anyhow::Result<()> {
    let c = |s: &str| CString::new(s).context("NUL in mount argument");
    let target_c = c(target.to_str().context("non-UTF-8 mount target")?)?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c(source)?.as_ptr(),
            target_c.as_ptr(),
            c(fstype)?.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Offset of `field` in the record of tracepoint `category/name`, or None if the kernel's record
/// has no such field.
pub fn field_offset(tracefs: &Path, category: &str, name: &str, field: &str) -> anyhow::Result<Option<u32>> {
    let path = tracefs.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_field_offset(&text, field))
}

/// Parses lines such as `field:pid_t child_pid;<TAB>offset:20;<TAB>size:4;<TAB>signed:1;`.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let declaration = line.strip_prefix("field:")?.split(';').next()?;
        let name = declaration.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        line.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|offset| offset.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    const FORK_5_15: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn finds_offsets_on_old_and_new_layouts() {
        assert_eq!(parse_field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(FORK_5_15, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(FORK_5_15, "child_comm"), Some(28));
        assert_eq!(parse_field_offset(FORK_6_18, "group_dead"), None);
    }
}
