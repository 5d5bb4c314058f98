//! `cargo xtask`: build, run and test buildwatch, installing what a fresh machine lacks.
mod bench;
mod build;
mod deb;
mod debian;
mod engines;
mod fixture;
mod fuzz;
mod image;
mod install;
mod kernels;
mod layers;
mod prerequisites;
mod run;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test buildwatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the kernel programs and the agent (release), installing the nightly rust-src
    /// component and bpf-linker first when they are missing.
    Build,
    /// Build, then run `buildwatch run` as root with the given arguments.
    Run {
        /// Arguments passed to `buildwatch run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, install the Debian packages the tests need when missing, run unit and integration
    /// tests (the integration tests need root; with CI=true nothing may be skipped).
    Test {
        /// Only run the unit tests.
        #[arg(long)]
        unit_only: bool,
    },
    /// Build (release) and install the binary, an example /etc/buildwatch/config.toml (never
    /// overwriting one) and the systemd unit buildwatch.service; prints the systemctl lines.
    Install {
        /// Installation prefix of the binary (PREFIX/bin/buildwatch).
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Prepended to every installed path (packaging, or a trial into a scratch directory).
        #[arg(long, default_value = "/")]
        destdir: std::path::PathBuf,
    },
    /// The kernel matrix: boot Debian's kernels (5.10, 6.1, 6.12; fetched into target/kernels)
    /// in qemu with this machine's root and run the detection suite's core scenarios in each.
    Kernels {
        /// Only these Debian releases (bullseye, bookworm, trixie).
        #[arg(long = "release")]
        releases: Vec<String>,
    },
    /// Check the agent's house rules from its own imports: no import circle, no import a layer
    /// must never make, no file over 600 lines outside its tests (docs/design.md).
    Layers,
    /// Build a Debian package (target/debian/buildwatch_<version>_amd64.deb): the binary, the
    /// unit, the example configuration as a conffile, the docs.
    Deb {
        /// Directory for the package (and its staging tree).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Build an OCI image with Docker (DOCKER_HOST applies): the release binary, its shared
    /// libraries and deploy/kubernetes/config.toml, no distribution base; tag buildwatch:<version>.
    Image {
        #[arg(long)]
        tag: Option<String>,
        /// Package this binary instead of building one.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Also write the image as a `docker save` archive, to load on nodes.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
    },
    /// Remove what `install` installed; the configuration and state stay unless --purge.
    Uninstall {
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        #[arg(long, default_value = "/")]
        destdir: std::path::PathBuf,
        /// Also remove /etc/buildwatch, /var/lib/buildwatch and /var/log/buildwatch.
        #[arg(long)]
        purge: bool,
    },
    /// Cut one connection's captured bytes out of a sensor event log into a decoder test
    /// fixture (one JSON line per syscall: length, encoding, content).
    Fixture {
        /// The sensor's JSON lines (e.g. target/tmp/detection-events.jsonl).
        events: std::path::PathBuf,
        #[arg(long)]
        conn_id: u64,
        /// `send` (a client's writes) or `recv` (a daemon's reads).
        #[arg(long, default_value = "recv")]
        direction: String,
        #[arg(long)]
        output: std::path::PathBuf,
    },
    /// Run every fuzz target (sensor/fuzz: the parsers attacker bytes reach) for a while,
    /// seeded from sensor/testdata; installs cargo-fuzz when missing. A crash fails the run.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The performance suite (needs root): host workloads under this build, the previous
    /// commit's build, bpftrace and auditd; a 64 MiB docker build; detection latency; RSS.
    /// Writes docs/performance.md.
    Bench {
        /// Rounds (each: bare, then every watcher, in rotating order).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// A `buildwatch` binary to compare with instead of building the previous commit.
        #[arg(long, conflicts_with_all = ["baseline_revision", "no_baseline"])]
        baseline: Option<std::path::PathBuf>,
        /// The git revision built as the baseline.
        #[arg(long, default_value = "HEAD~1")]
        baseline_revision: String,
        /// Compare with no other build.
        #[arg(long)]
        no_baseline: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build => build::build().map(drop),
        Command::Deb { out } => deb::deb(out).map(drop),
        Command::Layers => layers::check(),
        Command::Kernels { releases } => {
            build::build().and_then(|binary| kernels::matrix(&binary, &releases))
        }
        Command::Image { tag, binary, save } => image::image(image::Options { tag, binary, save }).map(drop),
        Command::Run { args } => run::run(&args),
        Command::Test { unit_only } => test::test(unit_only),
        Command::Install { prefix, destdir } => install::install(&install::Layout { prefix, destdir }),
        Command::Uninstall {
            prefix,
            destdir,
            purge,
        } => install::uninstall(&install::Layout { prefix, destdir }, purge),
        Command::Fixture {
            events,
            conn_id,
            direction,
            output,
        } => fixture::fixture(&events, conn_id, &direction, &output),
        Command::Fuzz { seconds } => fuzz::fuzz(seconds),
        Command::Bench {
            rounds,
            baseline,
            baseline_revision,
            no_baseline,
        } => bench::bench(bench::Options {
            rounds,
            baseline: match (baseline, no_baseline) {
                (_, true) => bench::Baseline::None,
                (Some(path), false) => bench::Baseline::Binary(path),
                (None, false) => bench::Baseline::Revision(baseline_revision),
            },
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}
