//! `cargo xtask image`: an OCI image built by the real Docker from the release binary, the
//! shared libraries `ldd` names for it and the container configuration; no distribution base.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{build, deb};

/// The configuration baked in at /etc/buildwatch/config.toml; the DaemonSet's ConfigMap holds
/// the same text (the image test checks they agree).
pub const CONTAINER_CONFIG: &str = "deploy/kubernetes/config.toml";

const DOCKERFILE: &str = "FROM scratch
COPY rootfs/ /
ENTRYPOINT [\"/usr/bin/buildwatch\", \"run\"]
";

pub struct Options {
    pub tag: Option<String>,
    /// Package this binary instead of building one.
    pub binary: Option<PathBuf>,
    /// Also write the image as a `docker save` archive (to load on nodes).
    pub save: Option<PathBuf>,
}

/// Builds the image; returns its tag.
pub fn image(options: Options) -> anyhow::Result<String> {
    let root = build::workspace_root();
    let binary = match options.binary {
        Some(binary) => binary,
        None => build::build()?,
    };
    let version = deb::package_version(&root)?;
    let tag = options.tag.unwrap_or_else(|| format!("buildwatch:{version}"));
    let context = root.join("target/image");
    let _ = fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");

    let put = |path: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let target = rootfs.join(path.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("a file in a directory"))?;
        fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
    put("/usr/bin/buildwatch", &read(&binary)?, 0o755)?;
    for library in shared_libraries(&binary)? {
        // Copied under the name the binary asks for (the loader's name is often a symlink).
        put(&library.to_string_lossy(), &read(&library)?, 0o755)?;
    }
    put(
        "/etc/buildwatch/config.toml",
        &read(&root.join(CONTAINER_CONFIG))?,
        0o644,
    )?;
    // The state directory is a hostPath volume; the directory exists for a run without one.
    fs::create_dir_all(rootfs.join("var/lib/buildwatch"))?;
    fs::write(context.join("Dockerfile"), DOCKERFILE)?;

    let revision = Command::new("git")
        .current_dir(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let status = Command::new("docker")
        .arg("build")
        .args(["--tag", &tag])
        .args(["--label", &format!("org.opencontainers.image.version={version}")])
        .args([
            "--label",
            &format!("org.opencontainers.image.revision={revision}"),
        ])
        .args(["--label", "org.opencontainers.image.title=buildwatch"])
        .arg(&context)
        .status()
        .context("running docker build (is the docker CLI installed and DOCKER_HOST reachable?)")?;
    if !status.success() {
        bail!("docker build of {tag} failed ({status})");
    }
    if let Some(save) = options.save {
        let status = Command::new("docker")
            .args(["save", "--output"])
            .arg(&save)
            .arg(&tag)
            .status()
            .context("running docker save")?;
        if !status.success() {
            bail!("docker save of {tag} failed ({status})");
        }
        println!("saved {tag} to {}", save.display());
    }
    println!("built {tag}");
    Ok(tag)
}

/// The shared objects the dynamic loader maps for `binary`, the loader itself included.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    if !output.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let libraries: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
            // "linux-vdso.so.1 (0x...)" is the kernel's and has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if libraries.is_empty() {
        bail!("ldd named no libraries for {}", binary.display());
    }
    Ok(libraries)
}
