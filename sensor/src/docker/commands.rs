//! Image operations done without a daemon API, known from the exec'd command line:
//! `podman build|pull|load|import`, `buildah bud|build|pull|from`, kaniko's `executor`.
use crate::model::{
    image_ref::ImageRef,
    operation::{BuildParams, Builder, Operation},
};

/// The operation an exec starts, if any. `exe` is the executable path, `argv` the command line.
pub fn classify(exe: Option<&str>, argv: &[String]) -> Option<Operation> {
    let program = exe
        .or(argv.first().map(String::as_str))
        .map(|p| p.rsplit('/').next().unwrap_or(p))?;
    let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    match program {
        "podman" | "podman-remote" => podman(&args),
        "buildah" => buildah(&args),
        "executor" => kaniko(&args),
        _ => None,
    }
}

/// The subcommand words and what follows them, global flags skipped.
fn subcommand<'a>(args: &[&'a str], global_with_value: &[&str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        if global_with_value.contains(&args[i]) {
            i += 1;
        }
        i += 1;
    }
    let words: Vec<&str> = args[i.min(args.len())..].iter().take(2).copied().collect();
    let rest = args.get(i + 1..).unwrap_or_default().to_vec();
    match words.as_slice() {
        [first @ ("image" | "buildx"), second, ..] => (
            vec![first, second],
            args.get(i + 2..).unwrap_or_default().to_vec(),
        ),
        [first, ..] => (vec![first], rest),
        [] => (Vec::new(), Vec::new()),
    }
}

const PODMAN_GLOBAL: [&str; 12] = [
    "--root",
    "--runroot",
    "--storage-driver",
    "--log-level",
    "--cgroup-manager",
    "--url",
    "--connection",
    "-c",
    "--identity",
    "--runtime",
    "--network-cmd-path",
    "--tmpdir",
];

fn podman(args: &[&str]) -> Option<Operation> {
    let (words, rest) = subcommand(args, &PODMAN_GLOBAL);
    match words.as_slice() {
        ["build"] | ["image", "build"] | ["buildx", "build"] => Some(build(Builder::Podman, &rest)),
        ["pull"] | ["image", "pull"] => positional(&rest, &[])
            .and_then(ImageRef::parse)
            .map(|image| Operation::Pull { image }),
        ["load"] | ["image", "load"] => Some(Operation::Load),
        ["import"] | ["image", "import"] => {
            let positional: Vec<&str> = rest.iter().copied().filter(|a| !a.starts_with('-')).collect();
            Some(Operation::Import {
                source: positional.first().unwrap_or(&"-").to_string(),
                image: positional.get(1).and_then(|r| ImageRef::parse(r)),
            })
        }
        _ => None,
    }
}

fn buildah(args: &[&str]) -> Option<Operation> {
    let (words, rest) = subcommand(args, &["--root", "--runroot", "--storage-driver", "--log-level"]);
    match words.as_slice() {
        ["bud"] | ["build"] | ["build-using-dockerfile"] => Some(build(Builder::Buildah, &rest)),
        ["pull"] | ["from"] => positional(
            &rest,
            &["--name", "--creds", "--authfile", "--arch", "--os", "--platform"],
        )
        .and_then(ImageRef::parse)
        .map(|image| Operation::Pull { image }),
        _ => None,
    }
}

fn kaniko(args: &[&str]) -> Option<Operation> {
    let mut params = BuildParams::default();
    for (flag, value) in flags(args) {
        match flag {
            "-d" | "--destination" => params.tags.extend(ImageRef::parse(value)),
            "-f" | "--dockerfile" => params.dockerfile = Some(value.to_string()),
            "-c" | "--context" if value.contains("://") => params.remote_context = Some(value.to_string()),
            "--build-arg" => params
                .build_arg_keys
                .extend(value.split('=').next().map(String::from)),
            _ => {}
        }
    }
    Some(Operation::Build {
        builder: Builder::Kaniko,
        params,
    })
}

fn build(builder: Builder, args: &[&str]) -> Operation {
    let mut params = BuildParams::default();
    for (flag, value) in flags(args) {
        match flag {
            "-t" | "--tag" => params.tags.extend(ImageRef::parse(value)),
            "-f" | "--file" => params.dockerfile = Some(value.to_string()),
            "--build-arg" => params
                .build_arg_keys
                .extend(value.split('=').next().map(String::from)),
            "--network" | "--net" => params.network_mode = Some(value.to_string()),
            "--pull" | "--pull-always" => params.pull = value != "false" && value != "never",
            _ => {}
        }
    }
    match args.last().filter(|a| !a.starts_with('-')) {
        Some(context) if context.contains("://") || context.starts_with("git@") => {
            params.remote_context = Some(context.to_string());
        }
        Some(context) => params.context_dir = Some(context.to_string()),
        None => {}
    }
    Operation::Build { builder, params }
}

/// `--flag value`, `--flag=value` and `-t value` pairs. A flag followed by another flag (or
/// nothing) has the value "true".
fn flags<'a>(args: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        if let Some((flag, value)) = arg.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            out.push((flag, value));
        } else if arg.starts_with('-') {
            match args.get(i + 1).filter(|v| !v.starts_with('-')) {
                Some(value) => {
                    out.push((arg, *value));
                    i += 1;
                }
                None => out.push((arg, "true")),
            }
        }
        i += 1;
    }
    out
}

/// The first argument that is neither a flag nor the value of one of `with_value`.
fn positional<'a>(args: &[&'a str], with_value: &[&str]) -> Option<&'a str> {
    let mut i = 0;
    while i < args.len() {
        if with_value.contains(&args[i]) {
            i += 2;
            continue;
        }
        if !args[i].starts_with('-') {
            return Some(args[i]);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn tags(operation: &Operation) -> Vec<String> {
        match operation {
            Operation::Build { params, .. } => params.tags.iter().map(ToString::to_string).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn podman_build_variants() {
        let build = classify(
            Some("/usr/bin/podman"),
            &argv("podman --log-level warn build --tls-verify=false -t evil:1 --tag=127.0.0.1:5000/e:2 -f Containerfile --build-arg TOKEN=s3cret ."),
        )
        .unwrap();
        assert_eq!(tags(&build), ["docker.io/library/evil:1", "127.0.0.1:5000/e:2"]);
        let Operation::Build { builder, params } = &build else {
            panic!()
        };
        assert_eq!(*builder, Builder::Podman);
        assert_eq!(params.dockerfile.as_deref(), Some("Containerfile"));
        assert_eq!(params.build_arg_keys.iter().collect::<Vec<_>>(), ["TOKEN"]);
        assert!(!format!("{build:?}").contains("s3cret"));
        assert!(matches!(
            classify(None, &argv("podman image build .")),
            Some(Operation::Build { .. })
        ));
        assert!(matches!(
            classify(None, &argv("buildah bud -t x .")),
            Some(Operation::Build {
                builder: Builder::Buildah,
                ..
            })
        ));
    }

    #[test]
    fn kaniko_and_pulls() {
        let kaniko = classify(
            Some("/kaniko/executor"),
            &argv("/kaniko/executor --context=git://example.org/r.git --destination reg:5000/app:1"),
        )
        .unwrap();
        assert_eq!(tags(&kaniko), ["reg:5000/app:1"]);
        assert_eq!(
            classify(
                None,
                &argv("podman pull --tls-verify=false 127.0.0.1:5000/base:1")
            ),
            Some(Operation::Pull {
                image: ImageRef::parse("127.0.0.1:5000/base:1").unwrap()
            })
        );
        assert_eq!(classify(None, &argv("podman ps -a")), None);
        assert_eq!(classify(None, &argv("podman")), None);
        assert_eq!(classify(None, &argv("ls -l")), None);
    }
}
