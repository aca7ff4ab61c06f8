//! A minimal QMP client: QEMU's JSON monitor on a unix socket, one command at a time.
//!
//! Why our own: the shim needs four commands (capabilities, `migrate-incoming`, `query-status`,
//! `cont`) and one event when it restores a VM from a template, and the image builder a few more
//! to save one; a line of JSON each way is all of it.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::{Error, Result};

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Events read while waiting for a command's answer.
    events: VecDeque<Value>,
}

fn qmp_err(what: impl std::fmt::Display) -> Error {
    Error::Command(format!("QMP: {what}"))
}

impl Qmp {
    /// Connects to QEMU's QMP socket (retrying until `deadline`: the socket appears some
    /// milliseconds after QEMU starts) and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Qmp> {
        let stream = loop {
            match crate::agent::connect_socket(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(qmp_err(format!("connecting {}: {e}", path.display())))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            events: VecDeque::new(),
        };
        let greeting = qmp.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_err(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| qmp_err(format!("reading: {e}")))?;
        if n == 0 {
            return Err(qmp_err("QEMU closed the monitor"));
        }
        serde_json::from_str(&line).map_err(|e| qmp_err(format!("{e}: {}", line.trim())))
    }

    /// Runs `command` and returns its `return` value; an `error` answer is an error.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| qmp_err(format!("writing: {e}")))?;
        loop {
            let v = self.read().await?;
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(qmp_err(format!(
                    "{command}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("failed")
                )));
            }
        }
    }

    /// Waits for the first event (already read or still to come) for which `pick` says yes.
    pub async fn wait_event(&mut self, pick: impl Fn(&Value) -> bool) -> Result<Value> {
        if let Some(i) = self.events.iter().position(&pick) {
            return Ok(self.events.remove(i).unwrap_or_default());
        }
        loop {
            let v = self.read().await?;
            if v.get("event").is_some() && pick(&v) {
                return Ok(v);
            }
        }
    }
}

/// The name and `data.status` of a MIGRATION event, for [`Qmp::wait_event`].
pub fn migration_status(event: &Value) -> Option<&str> {
    (event.get("event")?.as_str()? == "MIGRATION")
        .then(|| event.get("data")?.get("status")?.as_str())
        .flatten()
}
