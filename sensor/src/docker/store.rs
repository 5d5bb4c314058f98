//! What Docker keeps on disk under its data root (`/var/lib/docker`): the image a container was
//! created from, and the images a build, load or import wrote. Read only when a detection needs it, never on the
//! event path.
use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// At most this many image configs are read for one build or load (a classic build writes one
/// per step).
const MAX_CONFIGS_READ: usize = 512;
/// Image configs larger than this are not read (their image then has no creation time).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// `repositories.json` larger than this is not read (a store of many thousands of tags).
const MAX_REPOSITORIES_BYTES: u64 = 64 << 20;
/// Clock slack around a build's or load's start and end. The sensor sees the request before the
/// daemon writes anything and the end after it answered, so this only covers converting kernel
/// times to wall times; kept small because builds often run back to back.
const SLACK: Duration = Duration::from_millis(20);

/// Why image ids cannot be read under `data_root`, if they cannot: dockerd's classic image store
/// (`image/<driver>/imagedb`) is absent, e.g. with the containerd image store.
pub fn classic_store_missing(data_root: &Path) -> Option<String> {
    let has_imagedb = fs::read_dir(data_root.join("image"))
        .map(|drivers| drivers.flatten().any(|d| d.path().join("imagedb").is_dir()))
        .unwrap_or(false);
    (!has_imagedb).then(|| {
        format!(
            "no classic image store under {} (containerd image store, or another data root?): image ids are asked of each trusted dockerd over its API; a daemon that cannot be asked has its runs by id and of loaded images unlinked unless detect.docker_data_root names its root",
            data_root.display()
        )
    })
}

/// The image a Docker container was created from (`Config.Image` of its config.v2.json).
pub fn container_image(data_root: &Path, container_id: &str) -> Option<String> {
    if !is_hex_id(container_id) {
        return None;
    }
    let path = data_root
        .join("containers")
        .join(container_id)
        .join("config.v2.json");
    let bytes = crate::saferead::read_checked(None, &path, MAX_CONFIG_BYTES).ok()?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    config["Config"]["Image"].as_str().map(String::from)
}

/// An image in dockerd's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// `sha256:<64 hex>`.
    pub id: String,
    /// The `created` time of its config, Unix ns (the builder's clock: old for a pulled or
    /// loaded image, the build's time for a build's product).
    pub created_ns: Option<i128>,
    /// The names the store gives it (`repositories.json`, `name:tag` entries).
    pub names: Vec<String>,
    /// It has a `name@sha256:` reference: a pull (or push) tied it to a registry manifest. A
    /// build, load or import alone never gives one.
    pub registry_digest: bool,
}

/// The images whose config dockerd wrote between `from_ns` and `to_ns` (Unix time), by creation
/// time: what a build, load or import that ran then put in the store. A config is written once,
/// when the image first enters the store.
pub fn images_written(data_root: &Path, from_ns: i128, to_ns: i128) -> Vec<StoredImage> {
    let slack = SLACK.as_nanos() as i128;
    let window = (from_ns - slack)..=(to_ns + slack);
    let Ok(drivers) = fs::read_dir(data_root.join("image")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for driver in drivers.flatten() {
        let content = driver.path().join("imagedb/content/sha256");
        let Ok(entries) = fs::read_dir(&content) else {
            continue;
        };
        let mut images = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().filter(|n| n.len() == 64 && is_hex_id(n)) else {
                continue;
            };
            let written = entry.metadata().and_then(|m| m.modified()).map(unix_ns);
            if !written.is_ok_and(|w| window.contains(&w)) || images.len() >= MAX_CONFIGS_READ {
                continue;
            }
            images.push(StoredImage {
                id: format!("sha256:{hex}"),
                created_ns: read_bounded(&entry.path()).and_then(|b| created_ns(&b)),
                names: Vec::new(),
                registry_digest: false,
            });
        }
        if !images.is_empty() {
            name_images(&driver.path().join("repositories.json"), &mut images);
        }
        found.extend(images);
    }
    found.sort_by(|a, b| (a.created_ns, &a.id).cmp(&(b.created_ns, &b.id)));
    found
}

/// The image id `name` points to in the store (any driver), and whether that image also has a
/// `name@sha256:` reference (a registry served it).
pub fn tagged_image(data_root: &Path, name: &str) -> Option<(String, bool)> {
    let wanted = crate::model::image_ref::ImageRef::parse(name)?.to_string();
    let drivers = fs::read_dir(data_root.join("image")).ok()?;
    for driver in drivers.flatten() {
        let path = driver.path().join("repositories.json");
        let Some(json) = crate::saferead::read_checked(None, &path, MAX_REPOSITORIES_BYTES)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        for tags in json["Repositories"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, t)| t)
        {
            let Some(tags) = tags.as_object() else { continue };
            let found = tags.iter().find(|(key, _)| {
                !key.contains('@')
                    && crate::model::image_ref::ImageRef::parse(key).is_some_and(|r| r.to_string() == wanted)
            });
            if let Some((_, id)) = found {
                let id = id.as_str()?.to_string();
                let digest = tags
                    .iter()
                    .any(|(key, other)| key.contains('@') && other.as_str() == Some(&id));
                return Some((id, digest));
            }
        }
    }
    None
}

/// Fills in the names and registry digests `repositories.json` gives the images.
fn name_images(repositories: &Path, images: &mut [StoredImage]) {
    let Some(json) = crate::saferead::read_checked(None, repositories, MAX_REPOSITORIES_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return;
    };
    let named = json["Repositories"].as_object().into_iter().flatten();
    for (name, id) in named.flat_map(|(_, tags)| tags.as_object().into_iter().flatten()) {
        let Some(image) = images.iter_mut().find(|i| id.as_str() == Some(i.id.as_str())) else {
            continue;
        };
        if name.contains('@') {
            image.registry_digest = true;
        } else {
            image.names.push(name.clone());
        }
    }
}

/// A file's bytes, unless it is larger than any image config dockerd writes for a real image (a
/// loaded archive's config is the attacker's to make as big as they like), or not a regular
/// file (never through a symlink).
fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    crate::saferead::read_checked(None, path, MAX_CONFIG_BYTES).ok()
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
    fn images_written_in_a_window_with_their_names() {
        let root = Root::new("images");
        let start = SystemTime::now() - Duration::from_secs(1);
        let at = |offset_ms: u64| {
            humantime::format_rfc3339_nanos(start + Duration::from_millis(offset_ms)).to_string()
        };
        let built = "1".repeat(64);
        let step = "2".repeat(64);
        let loaded = "3".repeat(64);
        root.image(&built, &at(600));
        root.image(&step, &at(300));
        // Loaded (or pulled) now, created long ago.
        root.image(&loaded, "2024-05-22T18:18:12.052034407Z");
        fs::write(
            root.0.join("image/overlay2/imagedb/content/sha256/not-an-id"),
            "{}",
        )
        .unwrap();
        fs::write(
            root.0.join("image/overlay2/repositories.json"),
            format!(
                r#"{{"Repositories":{{"evil":{{"evil:1":"sha256:{loaded}","evil@sha256:{}":"sha256:{loaded}"}},"app":{{"app:2":"sha256:{built}"}}}}}}"#,
                "9".repeat(64)
            ),
        )
        .unwrap();
        let found = images_written(&root.0, unix_ns(start), unix_ns(SystemTime::now()));
        let summary: Vec<(&str, bool, Vec<&str>, bool)> = found
            .iter()
            .map(|i| {
                (
                    &i.id[7..8],
                    i.created_ns.is_some_and(|c| c >= unix_ns(start)),
                    i.names.iter().map(String::as_str).collect(),
                    i.registry_digest,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("3", false, vec!["evil:1"], true),
                ("2", true, vec![], false),
                ("1", true, vec!["app:2"], false)
            ]
        );
        let later = unix_ns(SystemTime::now()) + 60_000_000_000;
        assert!(
            images_written(&root.0, later, later + 1).is_empty(),
            "written before the window"
        );
        assert!(images_written(Path::new("/nonexistent"), 0, unix_ns(start)).is_empty());
    }

    #[test]
    fn what_a_name_points_to() {
        let root = Root::new("tagged");
        let (pulled, built) = ("6".repeat(64), "7".repeat(64));
        fs::create_dir_all(root.0.join("image/overlay2")).unwrap();
        fs::write(
            root.0.join("image/overlay2/repositories.json"),
            format!(
                r#"{{"Repositories":{{"127.0.0.1:5000/app":{{"127.0.0.1:5000/app:1":"sha256:{pulled}","127.0.0.1:5000/app@sha256:{}":"sha256:{pulled}"}},"evil":{{"evil:1":"sha256:{built}"}}}}}}"#,
                "9".repeat(64)
            ),
        )
        .unwrap();
        assert_eq!(
            tagged_image(&root.0, "127.0.0.1:5000/app:1"),
            Some((format!("sha256:{pulled}"), true))
        );
        assert_eq!(
            tagged_image(&root.0, "docker.io/library/evil:1"),
            Some((format!("sha256:{built}"), false))
        );
        assert_eq!(tagged_image(&root.0, "nothing:1"), None);
    }

    #[test]
    fn a_missing_classic_store_is_explained() {
        let root = Root::new("classic");
        assert!(classic_store_missing(&root.0)
            .unwrap()
            .contains("detect.docker_data_root"));
        root.image(&"4".repeat(64), "2024-05-22T18:18:12Z");
        assert_eq!(classic_store_missing(&root.0), None);
    }

    #[test]
    fn an_oversized_config_is_not_read() {
        let root = Root::new("oversized");
        let hex = "5".repeat(64);
        root.image(&hex, "2024-05-22T18:18:12Z");
        let path = root.0.join("image/overlay2/imagedb/content/sha256").join(&hex);
        let padding = " ".repeat(MAX_CONFIG_BYTES as usize);
        fs::write(
            &path,
            format!(r#"{{"created":"2024-05-22T18:18:12Z","pad":"{padding}"}}"#),
        )
        .unwrap();
        let now = unix_ns(SystemTime::now());
        let found = images_written(&root.0, now - 5_000_000_000, now);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].created_ns, None);
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
