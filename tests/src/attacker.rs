//! An unprivileged local user, created for the attack scenarios and removed afterwards, with a
//! home directory of its own and a copy of `bw-attacker` it can run under any name.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::command::{quietly, run};

pub struct Attacker {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Attacker {
    /// Creates the user (`useradd`, no login shell) and its home under /tmp.
    pub fn create() -> Self {
        let name = format!("bwatk{}", std::process::id() % 100_000);
        quietly("userdel", &[&name]);
        run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ],
        );
        let id = |flag: &str| -> u32 { run("id", &[flag, &name]).trim().parse().expect("a numeric id") };
        let (uid, gid) = (id("-u"), id("-g"));
        let home = PathBuf::from(format!("/tmp/buildwatch-{name}"));
        let _ = fs::remove_dir_all(&home);
        fs::create_dir_all(&home).expect("creating the attacker's home");
        run("chown", &[&format!("{uid}:{gid}"), &home.display().to_string()]);
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).expect("chmod home");
        Self { name, uid, gid, home }
    }

    /// Copies the attack tool (`source`, the `bw-attacker` binary) into the home as `name`
    /// (owned by the user, executable).
    pub fn tool(&self, source: &Path, name: &str) -> PathBuf {
        let target = self.home.join(name);
        fs::copy(source, &target).expect("copying the attack tool");
        run(
            "chown",
            &[
                &format!("{}:{}", self.uid, self.gid),
                &target.display().to_string(),
            ],
        );
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod tool");
        target
    }

    /// A command run as this user (`setpriv`: its uid, gid and groups; no capabilities).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("setpriv");
        self.drop_privileges(&mut command, program);
        command
    }

    /// The same, inside network namespace `netns` (a "remote" host).
    pub fn command_in(&self, netns: &str, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg("setpriv");
        self.drop_privileges(&mut command, program);
        command
    }

    fn drop_privileges(&self, command: &mut Command, program: &Path) {
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--reset-env")
            .arg(program)
            .current_dir(&self.home);
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        quietly("pkill", &["-KILL", "-u", &self.name]);
        quietly("userdel", &[&self.name]);
        let _ = fs::remove_dir_all(&self.home);
    }
}
