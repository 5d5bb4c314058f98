//! What Docker keeps on disk under its data root (`/var/lib/docker`): the image a container was
//! created from, and the images a build wrote. Read only when a detection needs it, never on the
//! event path.
use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// At most this many image configs are read for one build (a build writes one per step).
const MAX_CONFIGS_READ: usize = 512;
/// Clock slack around a build's start and end. The sensor sees the request before the daemon
/// creates anything and the end after it answered, so this only covers converting kernel times
/// to wall times; kept small because builds often run back to back.
const SLACK: Duration = Duration::from_millis(20);

/// The image a Docker container was created from (`Config.Image` of its config.v2.json).
pub fn container_image(data_root: &Path, container_id: &str) -> Option<String> {
    if !is_hex_id(container_id) {
        return None;
    }
    let path = data_root
        .join("containers")
        .join(container_id)
        .join("config.v2.json");
    let config: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    config["Config"]["Image"].as_str().map(String::from)
}

/// The ids (`sha256:<hex>`) of the images whose config says they were created between `from_ns`
/// and `to_ns` (Unix time), oldest first: what a build that ran then produced, intermediate
/// images of the classic builder included. Pulled images keep the creation time their builder
/// gave them, so a base image fetched during the build is not among them.
pub fn images_created(data_root: &Path, from_ns: i128, to_ns: i128) -> Vec<String> {
    let slack = SLACK.as_nanos() as i128;
    let (from_ns, to_ns) = (from_ns - slack, to_ns + slack);
    let Ok(drivers) = fs::read_dir(data_root.join("image")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut read = 0;
    for driver in drivers.flatten() {
        let content = driver.path().join("imagedb/content/sha256");
        let Ok(entries) = fs::read_dir(&content) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().filter(|n| n.len() == 64 && is_hex_id(n)) else {
                continue;
            };
            // The config file is written once, when the image is created, pulled or loaded:
            // older files cannot be this build's.
            let written = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(unix_ns)
                .unwrap_or(i128::MAX);
            if written < from_ns || read >= MAX_CONFIGS_READ {
                continue;
            }
            read += 1;
            let Some(created) = fs::read(entry.path()).ok().and_then(|b| created_ns(&b)) else {
                continue;
            };
            if (from_ns..=to_ns).contains(&created) {
                found.push((created, format!("sha256:{hex}")));
            }
        }
    }
    found.sort();
    found.into_iter().map(|(_, id)| id).collect()
}

/// The `created` time of an image config, Unix nanoseconds.
fn created_ns(config: &[u8]) -> Option<i128> {
    let config: serde_json::Value = serde_json::from_slice(config).ok()?;
    let created = humantime::parse_rfc3339_weak(config["created"].as_str()?).ok()?;
    Some(unix_ns(created))
}

fn unix_ns(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn is_hex_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Root(std::path::PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir().join(format!("bw-docker-root-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            Self(root)
        }

        fn image(&self, hex: &str, created: &str) {
            let dir = self.0.join("image/overlay2/imagedb/content/sha256");
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join(hex),
                format!(r#"{{"architecture":"amd64","created":"{created}","config":{{}}}}"#),
            )
            .unwrap();
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ns(rfc3339: &str) -> i128 {
        unix_ns(humantime::parse_rfc3339_weak(rfc3339).unwrap())
    }

    #[test]
    fn container_image_from_the_docker_data_root() {
        let root = Root::new("containers");
        let id = "ab".repeat(32);
        let dir = root.0.join("containers").join(&id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.v2.json"),
            r#"{"Config":{"Image":"gitlab/gitlab-runner:v17"}}"#,
        )
        .unwrap();
        assert_eq!(
            container_image(&root.0, &id).as_deref(),
            Some("gitlab/gitlab-runner:v17")
        );
        assert_eq!(container_image(&root.0, "../../etc"), None, "ids only, no paths");
        assert_eq!(container_image(&root.0, &"cd".repeat(32)), None);
    }

    #[test]
    fn images_a_build_created_are_found_by_their_config_time() {
        let root = Root::new("images");
        let start = SystemTime::now() - Duration::from_secs(1);
        let at = |offset_ms: u64| {
            humantime::format_rfc3339_nanos(start + Duration::from_millis(offset_ms)).to_string()
        };
        let built = "1".repeat(64);
        let step = "2".repeat(64);
        let pulled = "3".repeat(64);
        root.image(&step, &at(300));
        root.image(&built, &at(600));
        // A base image fetched during the build: written now, created long ago.
        root.image(&pulled, "2024-05-22T18:18:12.052034407Z");
        fs::write(
            root.0.join("image/overlay2/imagedb/content/sha256/not-an-id"),
            "{}",
        )
        .unwrap();
        let found = images_created(&root.0, unix_ns(start), unix_ns(SystemTime::now()));
        assert_eq!(found, [format!("sha256:{step}"), format!("sha256:{built}")]);
        assert!(images_created(&root.0, ns("2020-01-01T00:00:00Z"), ns("2020-01-02T00:00:00Z")).is_empty());
        assert!(images_created(Path::new("/nonexistent"), 0, unix_ns(start)).is_empty());
    }

    #[test]
    fn docker_creation_times_parse() {
        assert_eq!(
            created_ns(br#"{"created":"2026-11-27T00:30:12.123456789Z"}"#),
            Some(ns("2026-11-27T00:30:12Z") + 123_456_789)
        );
        assert_eq!(created_ns(br#"{"created":"yesterday"}"#), None);
        assert_eq!(created_ns(b"\xff"), None);
    }
}
