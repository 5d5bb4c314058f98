//! The operator's stack, each piece against the real component: a Prometheus scraping the
//! sensor, an rsyslog receiving it across a restart, and the container image run with the
//! DaemonSet's settings by the real dockerd.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use buildwatch_integration_tests::{
    command::run_command,
    environment::BASE_IMAGE,
    runner::dump_events,
    sensor::{event::*, Sensor},
};
use serde_json::Value;

use super::{free_port, sensor_config_with, World, TIMEOUT};

/// A real Prometheus (Debian's), run with the shipped deploy/prometheus/prometheus.yml (its
/// port and a 1 s interval put in), scrapes the main sensor while a build is detected.
pub fn prometheus_scrapes_the_detection_counter(world: &World) {
    let env = &world.env;
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/prometheus.yml"),
    )
    .expect("the shipped Prometheus config");
    assert!(shipped.contains("127.0.0.1:9464") && shipped.contains("scrape_interval: 15s"));
    let config = shipped
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{}", world.metrics_port))
        .replace("15s", "1s");
    let dir = env.dir.join("prometheus");
    std::fs::create_dir_all(&dir).expect("a Prometheus directory");
    std::fs::write(dir.join("prometheus.yml"), config).expect("writing the Prometheus config");
    let web_port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
    let mut prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting prometheus"),
    );
    let query = |expression: &str| -> Option<f64> {
        let output = Command::new("curl")
            .args(["-s", "-G", &format!("http://127.0.0.1:{web_port}/api/v1/query")])
            .arg("--data-urlencode")
            .arg(format!("query={expression}"))
            .output()
            .ok()?;
        let answer: Value = serde_json::from_slice(&output.stdout).ok()?;
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let mut wait = |what: &str, ready: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !ready() {
            assert!(
                prometheus.0.try_wait().ok().flatten().is_none(),
                "prometheus exited: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} within {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait("healthy scrape of the sensor", &|| {
        query("up{job=\"buildwatch\"}") == Some(1.0)
    });
    // Every rule and severity is exported from the start, at zero.
    let total = "sum(buildwatch_detections_total)";
    wait("detection counter", &|| query(total).is_some());
    let before = query(total).unwrap_or_default();

    let context = env.context(
        "det-metrics",
        &format!("FROM {BASE_IMAGE}\nLABEL metrics={}\n", env.nonce),
    );
    let mark = world.sensor.mark();
    run_command(env.docker().arg("build").arg(&context));
    world
        .sensor
        .detection(mark, "build_without_pull", "the build's detection", |e| {
            e["build"]["tags"].as_array().is_some_and(Vec::is_empty)
        });
    let increased = || query(total).is_some_and(|after| after > before);
    if !increased() {
        std::thread::sleep(Duration::from_secs(10));
    }
    assert!(
        increased(),
        "no increase of {total} from {before} (now {:?}); targets: {}",
        query(total),
        String::from_utf8_lossy(
            &Command::new("curl")
                .args(["-s", &format!("http://127.0.0.1:{web_port}/api/v1/targets")])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
    );
    let medium = "buildwatch_detections_total{rule=\"build_without_pull\",severity=\"medium\"}";
    assert!(query(medium).is_some_and(|n| n >= 1.0), "no {medium}");
    assert_eq!(
        query("up{job=\"buildwatch\"}"),
        Some(1.0),
        "the scrape is healthy"
    );
    assert!(
        query("scrape_samples_scraped{job=\"buildwatch\"}").is_some_and(|n| n > 10.0),
        "the sensor's metrics are scraped"
    );
    drop(prometheus);
}

/// A real rsyslog (Debian's) running the shipped deploy/rsyslog/buildwatch-receiver.conf, its
/// port and paths changed.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    process: Option<KillOnDrop>,
}

impl Rsyslog {
    fn new(dir: PathBuf) -> Self {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rsyslog/buildwatch-receiver.conf"),
        )
        .expect("the shipped rsyslog config");
        let port = free_port();
        std::fs::create_dir_all(&dir).expect("an rsyslog directory");
        let config = shipped
            .replace("/var/spool/rsyslog", &dir.display().to_string())
            .replace(
                "/var/log/buildwatch/received.jsonl",
                &dir.join("received.jsonl").display().to_string(),
            )
            .replace("port=\"514\"", &format!("port=\"{port}\""));
        assert!(
            config.contains(&port.to_string()),
            "the shipped config changed: {shipped}"
        );
        std::fs::write(dir.join("rsyslog.conf"), config).expect("writing the rsyslog config");
        Self {
            dir,
            port,
            process: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("rsyslog.log")).expect("a log file");
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting rsyslogd");
        let mut process = KillOnDrop(child);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                process.0.try_wait().ok().flatten().is_none(),
                "rsyslogd exited: {}",
                std::fs::read_to_string(self.dir.join("rsyslog.log")).unwrap_or_default()
            );
            assert!(std::time::Instant::now() < deadline, "rsyslogd never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.process = Some(process);
    }

    /// SIGTERM, as a service restart sends: rsyslog closes its connections and writes what it
    /// has.
    fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
        let status = process.0.wait().expect("waiting for rsyslogd");
        assert!(status.success(), "rsyslogd: {status}");
    }

    /// The lines rsyslog wrote; every one must be a whole JSON object.
    fn received(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("received.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).unwrap_or_else(|err| {
                    panic!("rsyslog wrote a line that is not whole JSON ({err}): {line}")
                })
            })
            .collect()
    }
}

/// `output.syslog` over TCP to a real rsyslog that is restarted in the middle: every line the
/// sensor wrote arrives whole (a detection made while rsyslog was down included), and the
/// sensor's count of sent lines is never more than what arrived.
pub fn syslog_reaches_rsyslog_across_its_restart(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let mut rsyslog = Rsyslog::new(env.dir.join("rsyslog"));
    rsyslog.start();
    let config = sensor_config_with(
        env,
        &env.dir.join("syslog-state"),
        &format!(
            "[output]\nstdout = true\nsyslog = \"tcp://127.0.0.1:{}\"\nsyslog_facility = \"local3\"\n",
            rsyslog.port
        ),
    );
    let sensor = Sensor::start(&world.binary, &config);
    let build = |step: &str| {
        let context = env.context(
            &format!("det-syslog-{step}"),
            &format!("FROM {BASE_IMAGE}\nLABEL syslog={nonce}-{step}\n"),
        );
        let mark = sensor.mark();
        run_command(env.docker().arg("build").arg(&context));
        sensor.detection(
            mark,
            "build_without_pull",
            &format!("the {step} build's detection"),
            |_| true,
        )
    };
    let arrived = |id: &str| rsyslog.received().iter().any(|line| line["id"] == id);
    let first = build("first");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !arrived(first["id"].as_str().unwrap_or_default()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first detection never reached rsyslog"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    rsyslog.stop();
    let while_down = build("while-down");
    rsyslog.start();
    let after = build("after");
    let status = sensor
        .terminate(Duration::from_secs(30))
        .expect("the syslog sensor did not stop");
    assert!(status.success(), "sensor: {status}\n{}", sensor.stderr());
    rsyslog.stop();

    let received = rsyslog.received();
    let written = sensor.all(0, |_| true);
    for line in &written {
        assert!(
            received.contains(line),
            "{} {} did not reach rsyslog whole ({} lines arrived); sensor stderr:\n{}",
            kind(line),
            line["id"],
            received.len(),
            sensor.stderr()
        );
    }
    for detection in [&first, &while_down, &after] {
        assert!(received.contains(detection), "{detection}");
    }
    let stop = written
        .iter()
        .find(|line| kind(line) == "sensor.stop")
        .expect("a sensor.stop line");
    let syslog = &stop["stats"]["queue"]["syslog"];
    let sent = syslog["sent"].as_u64().unwrap_or_default();
    assert!(sent > 0, "the stop line reports the syslog delivery: {stop}");
    // Each message counted as sent was acknowledged once (a resent one twice, as it arrives).
    assert!(
        received.len() as u64 >= sent,
        "reported {sent} sent, {} lines arrived",
        received.len()
    );
    assert!(
        sensor.stderr().contains("syslog receiver unreachable"),
        "the restart was noticed: {}",
        sensor.stderr()
    );
}

/// A child process killed when the scenario ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The manifest's pod settings a `docker run` can carry.
struct PodSettings {
    /// `docker run` arguments, host paths still those of the manifest.
    args: Vec<String>,
    /// hostPath → mountPath (read-only?) of each volume.
    host_paths: Vec<(String, String, bool)>,
    config_mount: String,
    metrics_port: u16,
    liveness_path: String,
    capabilities: Vec<String>,
}

fn manifest_documents() -> Vec<serde_yaml_ng::Value> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
    )
    .expect("the shipped DaemonSet");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("daemonset.yaml is YAML"))
        .collect()
}

fn text(value: &serde_yaml_ng::Value) -> String {
    match value {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// Reads the DaemonSet's pod: PID namespace, capabilities, security options, limits, mounts,
/// probe. Anything the translation does not know fails the test (so the manifest cannot gain
/// a setting the test does not carry).
fn pod_settings(documents: &[serde_yaml_ng::Value]) -> PodSettings {
    let daemonset = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in the manifest");
    let pod = &daemonset["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let container = &containers[0];
    let mut args = Vec::new();
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "hostPID");
    args.push("--pid=host".to_string());
    assert!(pod["hostNetwork"].is_null(), "the pod has its own network");
    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false), "not privileged");
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    args.push("--cap-drop=ALL".into());
    let capabilities: Vec<String> = security["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities to add")
        .iter()
        .map(text)
        .collect();
    if security["allowPrivilegeEscalation"].as_bool() == Some(false) {
        args.push("--security-opt=no-new-privileges".into());
    }
    if security["readOnlyRootFilesystem"].as_bool() == Some(true) {
        args.push("--read-only".into());
    }
    assert_eq!(security["seccompProfile"]["type"], "Unconfined");
    args.push("--security-opt=seccomp=unconfined".into());
    assert_eq!(security["appArmorProfile"]["type"], "Unconfined");
    args.push("--security-opt=apparmor=unconfined".into());
    let limits = &container["resources"]["limits"];
    let memory = text(&limits["memory"]);
    let mebibytes = memory.strip_suffix("Mi").expect("a memory limit in Mi");
    args.push(format!("--memory={mebibytes}m"));
    args.push(format!("--cpus={}", text(&limits["cpu"])));
    assert!(
        !text(&container["resources"]["requests"]["memory"]).is_empty(),
        "requests"
    );

    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let mut host_paths = Vec::new();
    let mut config_mount = String::new();
    for mount in container["volumeMounts"].as_sequence().expect("volumeMounts") {
        let name = &mount["name"];
        let volume = volumes
            .iter()
            .find(|v| &v["name"] == name)
            .expect("a volume per mount");
        let target = text(&mount["mountPath"]);
        let read_only = mount["readOnly"].as_bool() == Some(true);
        if !volume["configMap"].is_null() {
            config_mount = target;
        } else {
            let path = text(&volume["hostPath"]["path"]);
            assert!(
                !path.is_empty(),
                "volume {name:?} is neither a ConfigMap nor a hostPath"
            );
            host_paths.push((path, target, read_only));
        }
    }
    // The downward API's node name is the host's name here.
    for variable in container["env"].as_sequence().into_iter().flatten() {
        let name = text(&variable["name"]);
        let value = match &variable["valueFrom"]["fieldRef"]["fieldPath"] {
            serde_yaml_ng::Value::Null => text(&variable["value"]),
            field if field == "spec.nodeName" => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .expect("the hostname")
                .trim()
                .to_string(),
            other => panic!("the test does not know the field {other:?}"),
        };
        args.push(format!("--env={name}={value}"));
    }
    let probe = &container["livenessProbe"]["httpGet"];
    let port_name = text(&probe["port"]);
    let metrics_port = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| text(&p["name"]) == port_name)
        .and_then(|p| p["containerPort"].as_u64())
        .expect("the probe's port") as u16;
    PodSettings {
        args,
        host_paths,
        config_mount,
        metrics_port,
        liveness_path: text(&probe["path"]),
        capabilities,
    }
}

/// Writes a sensor's lines to target/tmp when the scenario ends, passed or not.
struct DumpOnDrop<'a>(&'a Sensor, &'static str);

impl Drop for DumpOnDrop<'_> {
    fn drop(&mut self) {
        dump_events(self.0, &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(self.1));
    }
}

/// Removes the container and the image whatever the scenario's outcome.
struct ContainerGuard<'a> {
    env: &'a buildwatch_integration_tests::environment::Environment,
    name: String,
    image: String,
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let _ = self.env.docker().args(["rm", "--force", &self.name]).output();
        let _ = self.env.docker().args(["rmi", "--force", &self.image]).output();
    }
}

/// `cargo xtask image` built by the test's dockerd, run by it with the DaemonSet's settings
/// (deploy/kubernetes/daemonset.yaml, read here), must report what the host-run sensor reports
/// for a remote build and for a pull-then-build, answer its liveness probe, and stop cleanly.
pub fn container_image_detects_like_the_host_sensor(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let documents = manifest_documents();
    let config_map = documents
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let shipped_config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/config.toml"),
    )
    .expect("deploy/kubernetes/config.toml");
    assert_eq!(
        text(&config_map["data"]["config.toml"]),
        shipped_config,
        "the ConfigMap and the image's config.toml differ"
    );
    let pod = pod_settings(&documents);

    let image = format!("buildwatch-test:{nonce}");
    let name = format!("bw-image-{nonce}");
    let _guard = ContainerGuard {
        env,
        name: name.clone(),
        image: image.clone(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["xtask", "image", "--tag", &image, "--binary"])
        .arg(&world.binary)
        .env("DOCKER_HOST", format!("unix://{}", env.socket.display()))
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("running cargo xtask image");
    assert!(
        built.status.success(),
        "cargo xtask image: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    // The node's paths, in this test: the test daemon's data root, a state directory of its
    // own; tracefs and BTF are the host's. The ConfigMap becomes a directory with the test
    // daemon's sockets, port and binaries added to the shipped config.
    let data_root = env.dir.join("data");
    let state = env.dir.join("container-state");
    std::fs::create_dir_all(&state).expect("a state directory");
    let config_dir = env.dir.join("container-config");
    std::fs::create_dir_all(&config_dir).expect("a config directory");
    assert!(shipped_config.contains("[watch]\n"), "{shipped_config}");
    let config = shipped_config.replacen(
        "[watch]\n",
        &format!(
            "[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = [2375]\ndaemons = [\"dockerd\", \"containerd\"]\ndaemon_binaries = [\"{}\", \"{}\"]\n",
            env.socket.display(),
            env.engine.dockerd().display(),
            env.engine.containerd().display(),
        ),
        1,
    ) + "[detect]\ndocker_data_root = \"/var/lib/docker\"\n";
    std::fs::write(config_dir.join("config.toml"), config).expect("writing the container's config");
    let mut volumes = vec![format!(
        "--volume={}:{}:ro",
        config_dir.display(),
        pod.config_mount
    )];
    for (host, target, read_only) in &pod.host_paths {
        let host = match host.as_str() {
            "/var/lib/docker" => data_root.display().to_string(),
            "/var/lib/buildwatch" => state.display().to_string(),
            other => other.to_string(),
        };
        volumes.push(format!(
            "--volume={host}:{target}{}",
            if *read_only { ":ro" } else { "" }
        ));
    }
    // An engine installed outside /usr (the Docker 26.1 under test) is mounted under /host as
    // the config's comment says.
    for binary in [env.engine.dockerd(), env.engine.containerd()] {
        let directory = binary.parent().expect("a binary in a directory");
        if !directory.starts_with("/usr") {
            volumes.push(format!(
                "--volume={}:/host{}:ro",
                directory.display(),
                directory.display()
            ));
        }
    }
    let run_with = |capabilities: &[String]| {
        let _ = env.docker().args(["rm", "--force", &name]).output();
        let mut command = env.docker();
        command
            .args(["run", "--rm", "--name", &name])
            .args(&pod.args)
            .args(capabilities.iter().map(|c| format!("--cap-add={c}")))
            .args(&volumes)
            .arg(&image);
        let sensor = Sensor::follow(command);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while sensor.mark() == 0 && sensor.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        sensor
    };
    let mut sensor = run_with(&pod.capabilities);
    if sensor.mark() == 0 && sensor.stderr().contains("unknown capability") {
        // Docker 20.10 predates CAP_BPF and CAP_PERFMON (Linux 5.8); the manifest's comment
        // says to use SYS_ADMIN for both there.
        let older: Vec<String> = pod
            .capabilities
            .iter()
            .filter(|c| !matches!(c.as_str(), "BPF" | "PERFMON"))
            .cloned()
            .chain(std::iter::once("SYS_ADMIN".to_string()))
            .collect();
        eprintln!("  (this dockerd does not know CAP_BPF/CAP_PERFMON: SYS_ADMIN instead)");
        sensor = run_with(&older);
    }
    let _dump = DumpOnDrop(&sensor, "container-events.jsonl");
    sensor.wait_for(0, TIMEOUT, "the container's sensor.start", |e| {
        kind(e) == "sensor.start"
    });

    // The kubelet's liveness probe: GET the path on the pod's address, from the node.
    let address = run_command(env.docker().args([
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &name,
    ]));
    let address = address.trim();
    assert!(!address.is_empty(), "the container has no address");
    let url = format!("http://{address}:{}{}", pod.metrics_port, pod.liveness_path);
    let probe = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &env.daemon_ns,
                "curl",
                "-sf",
                "--max-time",
                "5",
                &url,
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    let metrics = loop {
        if let Some(metrics) = probe() {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the liveness probe {url} never answered"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(metrics.contains("buildwatch_build_info"), "{metrics}");

    // Remote build: both sensors flag it the same way.
    let context = env.context(
        "det-image-remote",
        &format!("FROM {BASE_IMAGE}\nRUN echo image-{nonce} > /marker\n"),
    );
    let tag = format!("docker.io/bwdet/image-remote:{nonce}");
    let (host_mark, container_mark) = (world.sensor.mark(), sensor.mark());
    run_command(env.remote_docker().args(["build", "-t", &tag]).arg(&context));
    // Not the client's process: for a peer on another address the engine reports from the
    // daemon's side without waiting for the client's half (the client is normally on another
    // host), so whether a same-host client in another namespace is named depends on which ring
    // is read first; each sensor may differ there. Everything the daemon's side says must agree.
    let essentials = |detection: &Value| {
        serde_json::json!({
            "rule": detection["detection"]["rule"],
            "severity": detection["detection"]["severity"],
            "technique": detection["detection"]["attack"]["technique"],
            "tags": detection["build"]["tags"],
            "transport": detection["build"]["transport"],
            "endpoint": detection["build"]["endpoint"],
            "peer": detection["build"]["peer"],
            "daemon": detection["build"]["daemon"]["pid"],
            "host": detection["host"],
        })
    };
    let from_host = world.sensor.detection(
        host_mark,
        "build_without_pull",
        "the host sensor's detection",
        |e| has_tag(&e["build"], &tag),
    );
    let from_container = sensor.detection(
        container_mark,
        "build_without_pull",
        "the container's detection",
        |e| has_tag(&e["build"], &tag),
    );
    assert_eq!(essentials(&from_container), essentials(&from_host));
    assert_eq!(
        from_container["detection"]["severity"], "critical",
        "{from_container}"
    );

    // Pull, then build from it: neither flags the build.
    let (host_mark, container_mark) = (world.sensor.mark(), sensor.mark());
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    let pulled_tag = format!(
        "{}/bwbase:image-pulled-{nonce}",
        buildwatch_integration_tests::environment::REGISTRY
    );
    let context = env.context(
        "det-image-pulled",
        &format!("FROM {BASE_IMAGE}\nLABEL image={nonce}\n"),
    );
    run_command(env.docker().args(["build", "-t", &pulled_tag]).arg(&context));
    for (who, watcher, mark) in [
        ("host", &world.sensor, host_mark),
        ("container", &sensor, container_mark),
    ] {
        let summary = watcher.build_summary(mark, &format!("the {who} sensor's build line"), |b| {
            has_tag(b, &pulled_tag)
        });
        assert!(
            summary["build"]["detection_id"].is_null(),
            "{who} flagged it: {summary}"
        );
        let flagged = watcher.all(mark, |e| {
            kind(e) == "detection" && has_tag(&e["build"], &pulled_tag)
        });
        assert!(flagged.is_empty(), "{who} flagged the pulled build: {flagged:?}");
    }

    // `kubectl delete pod`: SIGTERM, then the sensor's last line and a clean exit.
    let status = sensor
        .terminate(Duration::from_secs(30))
        .expect("the container did not stop");
    assert!(
        status.success(),
        "the container's sensor: {status}\n{}",
        sensor.stderr()
    );
    assert!(
        sensor.all(0, |e| kind(e) == "sensor.stop").len() == 1,
        "no sensor.stop line: {}",
        sensor.stderr()
    );
    assert!(sensor.invalid_lines().is_empty(), "{:?}", sensor.invalid_lines());
}
