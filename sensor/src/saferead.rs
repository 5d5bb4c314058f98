//! Reading files other processes named, without trusting them: a client's build context, its
//! Dockerfile, Docker's image configs. A file is opened `O_NONBLOCK|O_NOFOLLOW|O_CLOEXEC`, then
//! its descriptor must be a regular file, within the size cap, on an ordinary file system (not
//! proc, sysfs, tracefs, debugfs and the like). Reads on a user's behalf run on a thread whose
//! file-system credentials are that user's (uid, gid, groups; root's DAC capabilities dropped),
//! so the kernel checks every directory on the way as it would for them. Every read runs off the
//! event loop with a deadline (see `worker`).
use std::{
    ffi::CString,
    fs::File,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::worker;

/// The identity a read is done as: a client's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Why a file was not read. Shown to analysts, so each says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is on {fs}, not an ordinary file system")]
    SpecialFileSystem { path: String, fs: &'static str },
    #[error("{path} is {size} bytes, over the {max}-byte cap")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("reading {path} failed: {reason}")]
    Read { path: String, reason: String },
    #[error("reading {path} did not finish within {ms} ms")]
    TimedOut { path: String, ms: u128 },
    #[error("cannot take the identity of uid {uid} to read {path}")]
    Identity { path: String, uid: u32 },
}

/// File systems whose "files" are kernel interfaces: reads can block forever (trace_pipe),
/// never end, or have side effects. `statfs(2)` magic numbers.
const SPECIAL_FILE_SYSTEMS: [(i64, &str); 17] = [
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x7472_6163, "tracefs"),
    (0x6462_6720, "debugfs"),
    (0x7363_6673, "securityfs"),
    (0x6265_6570, "configfs"),
    (0xcafe_4a11, "bpffs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0x6165_676c, "pstorefs"),
    (0xde5e_81e4, "efivarfs"),
    (0x1cd1, "devpts"),
    (0x1980_0202, "mqueue"),
    (0x4249_4e4d, "binfmt_misc"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x6e73_6673, "nsfs"),
    (0x6573_5543, "fusectl"),
];

/// How long a read on someone's behalf may take before it is abandoned.
pub const READ_DEADLINE: Duration = Duration::from_millis(500);

/// Reads `path` as `credentials` (or as the agent itself when `None`), at most `max` bytes,
/// off the calling thread and within `READ_DEADLINE`. With `root`, `path` is resolved inside
/// that directory as if it were `/` (a client's `/proc/PID/root`): its symlinks and `..` cannot
/// leave it.
pub fn read_as(
    root: Option<&Path>,
    path: &Path,
    credentials: Option<&Credentials>,
    max: u64,
) -> Result<Vec<u8>, Refusal> {
    let owned = path.to_path_buf();
    let root = root.map(Path::to_path_buf);
    let root_for_alone = root.clone();
    let credentials = credentials.cloned();
    let display = path.display().to_string();
    match credentials {
        // A thread of its own: its credentials change and die with it.
        Some(credentials) if credentials.uid != 0 => worker::run_alone(READ_DEADLINE, move || {
            take_identity(&credentials).map_err(|()| Refusal::Identity {
                path: owned.display().to_string(),
                uid: credentials.uid,
            })?;
            read_checked(root_for_alone.as_deref(), &owned, max)
        }),
        _ => worker::run(READ_DEADLINE, move || read_checked(root.as_deref(), &owned, max)),
    }
    .unwrap_or_else(|| {
        Err(Refusal::TimedOut {
            path: display,
            ms: READ_DEADLINE.as_millis(),
        })
    })
}

/// Opens and reads with every check, on the current thread (callers run it in a worker).
pub fn read_checked(root: Option<&Path>, path: &Path, max: u64) -> Result<Vec<u8>, Refusal> {
    let file = open_checked(root, path, max)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| Refusal::Read {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
    if bytes.len() as u64 > max {
        return Err(Refusal::TooLarge {
            path: path.display().to_string(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Opens `path` (inside `root`, when given) for reading with the checks above.
pub fn open_checked(root: Option<&Path>, path: &Path, max: u64) -> Result<File, Refusal> {
    let display = || path.display().to_string();
    let file = open_nofollow(root, path).map_err(|err| Refusal::Open {
        path: display(),
        reason: err.to_string(),
    })?;
    let metadata = file.metadata().map_err(|err| Refusal::Open {
        path: display(),
        reason: err.to_string(),
    })?;
    let kind = file_kind(&metadata);
    if kind != "regular file" {
        return Err(Refusal::NotRegular {
            path: display(),
            kind,
        });
    }
    if let Some(fs) = special_file_system(&file) {
        return Err(Refusal::SpecialFileSystem { path: display(), fs });
    }
    if metadata.len() > max {
        return Err(Refusal::TooLarge {
            path: display(),
            size: metadata.len(),
            max,
        });
    }
    Ok(file)
}

const OPEN_FLAGS: i32 =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;

fn c_string(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL byte in path"))
}

/// `path` resolved as if `root` were `/` (its symlinks too, absolute ones included), opened as
/// a handle only, and its metadata: a host path seen through `/proc/1/root` from a container.
pub fn metadata_in_root(root: &Path, path: &Path) -> std::io::Result<std::fs::Metadata> {
    open_in_root(root, path, libc::O_PATH | libc::O_CLOEXEC, libc::RESOLVE_IN_ROOT)?.metadata()
}

fn open_in_root(root: &Path, path: &Path, flags: i32, resolve: u64) -> std::io::Result<File> {
    let c_root = c_string(root)?;
    // SAFETY: valid NUL-terminated path; the returned fd is owned by the File below.
    let root_fd = owned(unsafe {
        libc::open(
            c_root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let c_relative = c_string(if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    })?;
    // SAFETY: open_how is plain data; zeroed then filled.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: valid fd, path and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            c_relative.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd as i32)
}

fn open_nofollow(root: Option<&Path>, path: &Path) -> std::io::Result<File> {
    let Some(root) = root else {
        let c_path = c_string(path)?;
        // SAFETY: valid NUL-terminated path; the returned fd is owned by the File below.
        let fd = unsafe { libc::open(c_path.as_ptr(), OPEN_FLAGS) };
        return owned(fd);
    };
    open_in_root(
        root,
        path,
        OPEN_FLAGS,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

fn owned(fd: i32) -> std::io::Result<File> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "symbolic link"
    }
}

fn special_file_system(file: &File) -> Option<&'static str> {
    // SAFETY: zeroed statfs is a valid out-parameter; the fd is open.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Some("an unknown file system");
    }
    let magic = stat.f_type as i64 & 0xffff_ffff;
    SPECIAL_FILE_SYSTEMS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

/// Makes this thread's file-system identity `credentials`: supplementary groups, fsgid, fsuid.
/// Raw syscalls on purpose: glibc's wrappers would apply setgroups to every thread. Changing the
/// fsuid from 0 drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread's effective set.
fn take_identity(credentials: &Credentials) -> Result<(), ()> {
    let groups: Vec<libc::gid_t> = credentials.groups.iter().take(256).copied().collect();
    // SAFETY: plain syscalls with valid arguments, affecting this thread only.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(());
        }
        libc::syscall(libc::SYS_setfsgid, credentials.gid);
        libc::syscall(libc::SYS_setfsuid, credentials.uid);
        // Both calls return the previous value; asking again with -1 tells whether they took.
        let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        if fsuid != credentials.uid || fsgid != credentials.gid {
            return Err(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("bw-saferead-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_are_read_within_the_cap() {
        let dir = dir("regular");
        let file = dir.join("Dockerfile");
        std::fs::write(&file, "FROM alpine\n").unwrap();
        assert_eq!(read_as(None, &file, None, 100).unwrap(), b"FROM alpine\n");
        assert!(matches!(
            read_as(None, &file, None, 4),
            Err(Refusal::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fifos_symlinks_and_kernel_files_are_refused_at_once() {
        let dir = dir("special");
        let fifo = dir.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(matches!(
            read_as(None, &fifo, None, 100),
            Err(Refusal::NotRegular { kind: "FIFO", .. })
        ));
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "a FIFO never blocks"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(matches!(
            read_as(None, &link, None, 100),
            Err(Refusal::Open { .. })
        ));
        assert!(matches!(
            read_as(None, Path::new("/proc/self/status"), None, 1 << 20),
            Err(Refusal::SpecialFileSystem { fs: "procfs", .. })
        ));
        assert!(matches!(
            read_as(None, &dir, None, 100),
            Err(Refusal::NotRegular {
                kind: "directory",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_paths_resolve_inside_the_given_root() {
        use std::os::unix::fs::MetadataExt as _;
        let root = dir("in-root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::write(root.join("usr/bin/dockerd"), "elf").unwrap();
        // An absolute symlink means the root's /usr/bin, not the caller's.
        std::os::unix::fs::symlink("/usr/bin/dockerd", root.join("usr/sbin/dockerd")).unwrap();
        let through_link = metadata_in_root(&root, Path::new("/usr/sbin/dockerd")).unwrap();
        let target = std::fs::metadata(root.join("usr/bin/dockerd")).unwrap();
        assert_eq!(
            (through_link.dev(), through_link.ino()),
            (target.dev(), target.ino())
        );
        assert!(metadata_in_root(&root, Path::new("/../../etc/passwd")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_root_confines_symlinks_and_dotdot() {
        let dir = dir("root");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hostname"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("ctx")).unwrap();
        let read = |path: &str| read_as(Some(&dir), Path::new(path), None, 100);
        assert_eq!(read("/ctx/hostname").unwrap(), b"inside\n");
        assert_eq!(read("/../../../etc/hostname").unwrap(), b"inside\n");
        assert!(
            matches!(read("/ctx"), Err(Refusal::Open { .. })),
            "last component never followed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// As root, a file only root may read is refused when read as another user, and the
    /// directories on the way are checked too.
    #[test]
    fn reads_as_a_user_obey_their_permissions() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let dir = dir("identity");
        let open = dir.join("open");
        std::fs::write(&open, "FROM alpine\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "FROM secret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        assert_eq!(
            read_as(None, &open, Some(&nobody), 100).unwrap(),
            b"FROM alpine\n"
        );
        assert!(matches!(
            read_as(None, &secret, Some(&nobody), 100),
            Err(Refusal::Open { .. })
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            matches!(
                read_as(None, &open, Some(&nobody), 100),
                Err(Refusal::Open { .. })
            ),
            "a directory the user cannot search hides the file"
        );
        // The agent's own identity is untouched by the reads above.
        assert_eq!(read_as(None, &secret, None, 100).unwrap(), b"FROM secret\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
