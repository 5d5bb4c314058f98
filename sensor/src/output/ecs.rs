//! The `ecs` output format: each line with Elastic Common Schema field names (ECS 8) for what
//! has an ECS home (time, host, event, process, user, container, source/destination, rule,
//! threat), and the whole buildwatch line under `buildwatch`, so nothing is lost.
use serde_json::{json, Map, Value};

pub const ECS_VERSION: &str = "8.11.0";

/// Maps one buildwatch line (our schema, docs/events.md) to an ECS document.
pub fn to_ecs(line: Value) -> Value {
    let kind = line["kind"].as_str().unwrap_or_default().to_string();
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), line["time"].clone());
    doc.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    doc.insert("host".into(), json!({ "name": line["host"] }));
    let mut event = json!({
        "id": line["id"],
        "kind": event_kind(&kind),
        "action": kind,
        "module": "buildwatch",
        "dataset": format!("buildwatch.{}", kind.split('.').next().unwrap_or_default()),
    });
    if let Some(category) = category(&kind) {
        event["category"] = json!([category]);
    }
    if let Some(process) = line.get("process") {
        insert_process(&mut doc, process);
    }
    if let Some(socket) = line.get("socket") {
        insert_endpoints(&mut doc, socket);
    }
    if let Some(detection) = line.get("detection") {
        let severity = detection["severity"].as_str().unwrap_or_default();
        event["severity"] = json!(severity_score(severity));
        event["risk_score"] = json!(severity_score(severity));
        event["reason"] = json!(detection["reasons"].as_array().map(|r| r
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; ")));
        doc.insert("message".into(), detection["summary"].clone());
        doc.insert(
            "rule".into(),
            json!({ "id": detection["id"], "name": detection["rule"], "ruleset": "buildwatch" }),
        );
        let attack = &detection["attack"];
        doc.insert(
            "threat".into(),
            json!({
                "framework": "MITRE ATT&CK",
                "technique": { "id": [attack["technique"]], "name": [attack["technique_name"]] },
                "tactic": { "id": [attack["tactic"]], "name": [attack["tactic_name"]] },
            }),
        );
        // The client of the build or operation is the process ECS tools pivot on.
        let subject = line
            .get("build")
            .or_else(|| line.get("operation"))
            .or_else(|| line.get("api"));
        if let Some(subject) = subject {
            if let Some(client) = subject.get("client") {
                insert_process(&mut doc, client);
            }
            if let Some(ip) = subject["peer"].as_str().and_then(split_address) {
                doc.insert("source".into(), json!({ "ip": ip.0, "port": ip.1 }));
            }
        }
    }
    doc.insert("event".into(), event);
    let mut original = line;
    if let Some(fields) = original.as_object_mut() {
        for key in ["id", "kind", "time", "host"] {
            fields.remove(key);
        }
    }
    doc.insert("buildwatch".into(), original);
    Value::Object(doc)
}

fn event_kind(kind: &str) -> &'static str {
    match kind {
        "detection" => "alert",
        "sensor.health" => "metric",
        "sensor.start" | "sensor.stop" | "sensor.loss" | "sensor.daemon" => "state",
        _ => "event",
    }
}

fn category(kind: &str) -> Option<&'static str> {
    match kind.split('.').next()? {
        "process" | "build" => Some("process"),
        "socket" => Some("network"),
        "docker" => Some("configuration"),
        "detection" => Some("intrusion_detection"),
        _ => None,
    }
}

/// Elastic's risk scores for severities.
fn severity_score(severity: &str) -> u32 {
    match severity {
        "critical" => 99,
        "high" => 73,
        "medium" => 47,
        _ => 21,
    }
}

fn insert_process(doc: &mut Map<String, Value>, process: &Value) {
    let mut mapped = json!({
        "pid": process["pid"],
        "name": process["comm"],
    });
    for (ours, ecs) in [
        ("exe", "executable"),
        ("argv", "args"),
        ("cwd", "working_directory"),
    ] {
        if !process[ours].is_null() {
            mapped[ecs] = process[ours].clone();
        }
    }
    if !process["tid"].is_null() {
        mapped["thread"] = json!({ "id": process["tid"] });
    }
    if !process["ppid"].is_null() {
        mapped["parent"] = json!({ "pid": process["ppid"] });
    }
    doc.insert("process".into(), mapped);
    if let Some(uid) = process["uid"].as_u64() {
        doc.insert("user".into(), json!({ "id": uid.to_string() }));
    }
    if let Some(gid) = process["gid"].as_u64() {
        doc.insert("group".into(), json!({ "id": gid.to_string() }));
    }
    if let Some(id) = process["container_id"].as_str() {
        doc.insert("container".into(), json!({ "id": id }));
    }
}

/// Source is who opened the connection, destination who accepted it.
fn insert_endpoints(doc: &mut Map<String, Value>, socket: &Value) {
    let peer = socket["peer"].as_str().and_then(split_address);
    let local = socket["local"].as_str().and_then(split_address);
    let (source, destination) = match socket["role"].as_str() {
        Some("daemon_accepted") => (peer, local),
        _ => (None, peer),
    };
    for (field, address) in [("source", source), ("destination", destination)] {
        if let Some((ip, port)) = address {
            doc.insert(field.into(), json!({ "ip": ip, "port": port }));
        }
    }
    let transport = if socket["peer"].as_str().is_some_and(|p| p.starts_with("unix:")) {
        "unix"
    } else {
        "tcp"
    };
    doc.insert("network".into(), json!({ "transport": transport }));
}

/// `10.0.0.1:2375` or `[::1]:2375` -> (ip, port).
fn split_address(text: &str) -> Option<(String, u16)> {
    let address: std::net::SocketAddr = text.parse().ok()?;
    Some((address.ip().to_string(), address.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detection_in_ecs() {
        let line = json!({
            "id": "r-28", "kind": "detection", "time": "2026-11-26T22:59:21.417121076Z", "host": "vm",
            "detection": {
                "id": "det-1", "rule": "build_without_pull", "severity": "critical",
                "summary": "docker built evil:1", "reasons": ["a", "b"], "evidence": ["r-23"],
                "attack": {"technique": "T1612", "technique_name": "Build Image on Host", "tactic": "TA0005", "tactic_name": "Defense Evasion"}
            },
            "build": {"peer": "10.0.0.2:4000", "client": {"pid": 7, "comm": "docker", "exe": "/usr/bin/docker", "argv": ["docker", "build"], "uid": 1000, "gid": 1000}}
        });
        let doc = to_ecs(line);
        assert_eq!(doc["@timestamp"], "2026-11-26T22:59:21.417121076Z");
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["event"]["severity"], 99);
        assert_eq!(doc["event"]["reason"], "a; b");
        assert_eq!(doc["rule"]["name"], "build_without_pull");
        assert_eq!(doc["threat"]["technique"]["id"][0], "T1612");
        assert_eq!(doc["message"], "docker built evil:1");
        assert_eq!(doc["process"]["executable"], "/usr/bin/docker");
        assert_eq!(doc["user"]["id"], "1000");
        assert_eq!(doc["source"]["ip"], "10.0.0.2");
        assert_eq!(
            doc["buildwatch"]["detection"]["evidence"][0], "r-23",
            "nothing is lost"
        );
        assert!(doc["buildwatch"].get("time").is_none());
    }

    #[test]
    fn an_accepted_connection_in_ecs() {
        let line = json!({
            "id": "r-3", "kind": "socket.accept", "time": "t", "host": "vm",
            "process": {"pid": 5, "tid": 6, "ppid": 1, "comm": "dockerd", "uid": 0, "gid": 0, "container_id": "abc"},
            "socket": {"role": "daemon_accepted", "peer": "10.0.0.2:4000", "local": "10.0.0.1:2375"}
        });
        let doc = to_ecs(line);
        assert_eq!(doc["event"]["category"][0], "network");
        assert_eq!(doc["source"]["port"], 4000);
        assert_eq!(doc["destination"]["ip"], "10.0.0.1");
        assert_eq!(doc["process"]["parent"]["pid"], 1);
        assert_eq!(doc["container"]["id"], "abc");
        assert_eq!(doc["network"]["transport"], "tcp");
    }
}
