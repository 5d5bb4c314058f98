//! The guest's initramfs: busybox, the init script, and just the modules that mount this
//! machine's root over virtio 9p under an overlay (everything else the guest loads from the
//! kernel's own module tree, once that root is mounted). Written as a newc cpio archive.
use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Modules the init script loads, in this order after their dependencies.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A file of the archive: its path inside, mode and bytes.
struct Entry {
    path: String,
    mode: u32,
    bytes: Vec<u8>,
}

/// Writes the initramfs for the kernel whose module tree is `modules` to `out`.
pub fn build(modules: &Path, init: &str, out: &Path) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    let mut entries = vec![
        Entry {
            path: "init".into(),
            mode: 0o100755,
            bytes: init.as_bytes().to_vec(),
        },
        Entry {
            path: "bin/busybox".into(),
            mode: 0o100755,
            bytes: fs::read(busybox).context("reading /bin/busybox (Debian package busybox-static)")?,
        },
    ];
    let mut order = String::new();
    for module in load_order(modules, BOOT_MODULES)? {
        let name = module_name(&module);
        entries.push(Entry {
            path: format!("modules/{name}.ko"),
            mode: 0o100644,
            bytes: module_bytes(&modules.join(&module))?,
        });
        order.push_str(&format!("{name}.ko\n"));
    }
    entries.push(Entry {
        path: "modules.order".into(),
        mode: 0o100644,
        bytes: order.into_bytes(),
    });
    let archive = newc(&entries);
    fs::write(out, archive).with_context(|| format!("writing {}", out.display()))
}

/// The module files (relative to `modules`) that loading `wanted` takes, each after the ones it
/// depends on (from `modules.dep`). A module built into the kernel is simply not there.
fn load_order(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let dep_file = modules.join("modules.dep");
    let text = fs::read_to_string(&dep_file)
        .with_context(|| format!("reading {} (depmod makes it)", dep_file.display()))?;
    let depends: HashMap<&str, Vec<&str>> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| (module.trim(), deps.split_whitespace().collect()))
        .collect();
    let mut order = Vec::new();
    for want in wanted {
        if let Some(module) = depends
            .keys()
            .find(|module| module_name(Path::new(module)) == *want)
        {
            visit(module, &depends, &mut order, 0)?;
        }
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

fn visit<'a>(
    module: &'a str,
    depends: &HashMap<&'a str, Vec<&'a str>>,
    order: &mut Vec<&'a str>,
    depth: usize,
) -> anyhow::Result<()> {
    if depth > 32 {
        bail!("modules.dep: a dependency cycle through {module}");
    }
    if order.contains(&module) {
        return Ok(());
    }
    for dep in depends.get(module).into_iter().flatten() {
        visit(dep, depends, order, depth + 1)?;
    }
    order.push(module);
    Ok(())
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`.
fn module_name(path: &Path) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    file.split(".ko").next().unwrap_or_default().to_string()
}

/// A module's bytes, decompressed (busybox's insmod takes plain ELF).
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let decompressor = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(decompressor)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {decompressor}"))?;
    if !out.status.success() {
        bail!("{decompressor} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

/// The entries as a newc ("070701") cpio archive, with the directories they need.
fn newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut inode = 1;
    let mut dirs: Vec<String> = Vec::new();
    for entry in entries {
        let mut parent = String::new();
        for part in Path::new(&entry.path).parent().into_iter().flat_map(Path::iter) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&part.to_string_lossy());
            if !dirs.contains(&parent) {
                dirs.push(parent.clone());
                record(&mut out, &mut inode, &parent, 0o40755, &[]);
            }
        }
        record(&mut out, &mut inode, &entry.path, entry.mode, &entry.bytes);
    }
    record(&mut out, &mut inode, "TRAILER!!!", 0, &[]);
    out
}

fn record(out: &mut Vec<u8>, inode: &mut u32, path: &str, mode: u32, bytes: &[u8]) {
    let links = if mode & 0o40000 != 0 { 2 } else { 1 };
    let fields = [
        *inode,
        mode,
        0,
        0,
        links,
        0,
        bytes.len() as u32,
        0,
        0,
        0,
        0,
        path.len() as u32 + 1,
        0,
    ];
    *inode += 1;
    let _ = write!(out, "070701");
    for field in fields {
        let _ = write!(out, "{field:08X}");
    }
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    pad(out);
    out.extend_from_slice(bytes);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_archive_holds_its_files_and_directories() {
        let archive = newc(&[Entry {
            path: "modules/a.ko".into(),
            mode: 0o100644,
            bytes: b"abc".to_vec(),
        }]);
        let text = String::from_utf8_lossy(&archive);
        // The directory first, then the file with its size (3), then the trailer.
        let dir = text.find("modules\0").expect("directory entry");
        let file = text.find("modules/a.ko\0").expect("file entry");
        assert!(dir < file);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(&archive[..6], b"070701");
        // Header of the file: size field is the 7th (after magic), 8 hex digits.
        let header = &text[file - 110 + 6..file];
        assert_eq!(&header[6 * 8..7 * 8], "00000003");
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let dir = std::env::temp_dir().join(format!("bw-initramfs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
             kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz\n\
             kernel/fs/netfs/netfs.ko.xz:\n\
             kernel/fs/overlayfs/overlay.ko.xz:\n",
        )
        .unwrap();
        let order = load_order(&dir, &["9p", "overlay", "virtio_pci"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["netfs", "9pnet", "9p", "overlay"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
