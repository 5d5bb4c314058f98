//! Running external programs with readable failures.
use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

/// Runs `program args`, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = output(Command::new(program).args(args));
    check(program, args, &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a prepared command, panicking with its output when it fails.
pub fn run_command(command: &mut Command) -> String {
    let description = format!("{command:?}");
    let output = output(command);
    check(&description, &[], &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command feeding `input` on stdin.
pub fn run_with_input(command: &mut Command, input: &[u8]) -> String {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {description}: {err}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("writing stdin");
    let output = child.wait_with_output().expect("waiting for the command");
    check(&description, &[], &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs and ignores failure (cleanup paths).
pub fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"))
}

fn check(program: &str, args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
