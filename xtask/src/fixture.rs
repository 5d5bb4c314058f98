//! `cargo xtask fixture`: cuts one connection's bytes out of a sensor event log, as the syscalls
//! moved them, into a test fixture for the protocol decoders (sensor/testdata/).
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

pub fn fixture(events: &Path, conn_id: u64, direction: &str, output: &Path) -> anyhow::Result<()> {
    let input = fs::File::open(events).with_context(|| format!("cannot open {}", events.display()))?;
    let mut records = Vec::new();
    for (number, line) in BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", events.display()))?;
        let event: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a JSON line", events.display(), number + 1))?;
        if event["kind"] != "socket.data"
            || event["socket"]["conn_id"] != conn_id
            || event["data"]["direction"] != direction
        {
            continue;
        }
        let data = &event["data"];
        records.push(json!({
            "length": data["length"],
            "encoding": data["encoding"],
            "content": data["content"],
        }));
    }
    if records.is_empty() {
        bail!(
            "no {direction} data on connection {conn_id} in {}",
            events.display()
        );
    }
    let mut out = fs::File::create(output).with_context(|| format!("cannot create {}", output.display()))?;
    for record in &records {
        writeln!(out, "{record}")?;
    }
    println!("{} records -> {}", records.len(), output.display());
    Ok(())
}
