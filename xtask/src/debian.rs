//! Debian packages from another release, fetched without touching the system's apt
//! configuration: apt gets its own sources list, state and cache under `target/`. The Docker 26
//! engines and the kernel matrix's kernels come this way.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// One Debian release's archive, seen through a private apt state in `dir`.
pub struct PrivateApt {
    suite: &'static str,
    dir: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    /// Writes the sources list for `suite` into `dir` and updates the package lists there.
    pub fn open(suite: &'static str, dir: &Path) -> anyhow::Result<Self> {
        let lists = dir.join("lists");
        fs::create_dir_all(lists.join("partial")).with_context(|| format!("creating {}", lists.display()))?;
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"),
        )?;
        let options = vec![
            format!("Dir::Etc::sourcelist={}", sources.display()),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::Lists={}", lists.display()),
            // `download` writes as root; apt's sandbox user could not write here.
            "APT::Sandbox::User=root".to_string(),
        ];
        let apt = Self {
            suite,
            dir: dir.to_path_buf(),
            options,
        };
        apt.run("apt-get", &["update"], dir)?;
        Ok(apt)
    }

    /// The first package `package` depends on whose name starts with `prefix` (a metapackage's
    /// current target: `linux-image-amd64` → `linux-image-6.1.0-50-amd64`).
    pub fn dependency(&self, package: &str, prefix: &str) -> anyhow::Result<String> {
        let mut command = Command::new("apt-cache");
        for option in &self.options {
            command.args(["-o", option]);
        }
        let out = command
            .args(["depends", package])
            .output()
            .context("running apt-cache")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with(prefix))
            .map(str::to_string)
            .with_context(|| format!("Debian {}: {package} depends on no {prefix}*", self.suite))
    }

    /// Downloads `packages` and unpacks them all into `prefix` (replaced whole, so a failed
    /// fetch never leaves half a tree behind).
    pub fn unpack(&self, packages: &[&str], prefix: &Path) -> anyhow::Result<()> {
        let debs = self.dir.join("debs");
        let _ = fs::remove_dir_all(&debs);
        fs::create_dir_all(&debs)?;
        let mut download = vec!["download"];
        download.extend(packages);
        self.run("apt-get", &download, &debs)?;
        let mut unpacking = prefix.as_os_str().to_owned();
        unpacking.push(".partial");
        let unpacking = PathBuf::from(unpacking);
        let _ = fs::remove_dir_all(&unpacking);
        fs::create_dir_all(&unpacking)?;
        for entry in fs::read_dir(&debs)? {
            let deb = entry?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                crate::prerequisites::run(
                    "dpkg",
                    &["-x", &deb.to_string_lossy(), &unpacking.to_string_lossy()],
                )?;
            }
        }
        let _ = fs::remove_dir_all(prefix);
        fs::rename(&unpacking, prefix)?;
        fs::remove_dir_all(&debs)?;
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str], dir: &Path) -> anyhow::Result<()> {
        let mut command = Command::new(program);
        command.current_dir(dir).arg("-qq");
        for option in &self.options {
            command.args(["-o", option]);
        }
        let status = command
            .args(args)
            .status()
            .with_context(|| format!("running {program}"))?;
        if !status.success() {
            bail!(
                "{program} {} (Debian {}, private sources list) failed",
                args.join(" "),
                self.suite
            );
        }
        Ok(())
    }
}
