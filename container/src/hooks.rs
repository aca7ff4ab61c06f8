//! OCI hooks: programs run at fixed points of the container's life, given the container's
//! state as JSON on stdin, each bounded by its timeout.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde::Serialize;

use crate::error::{Error, Result};

/// The OCI `state` a hook reads on stdin.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    pub pid: u32,
    pub bundle: String,
    pub annotations: std::collections::HashMap<String, String>,
}

impl State {
    pub fn new(
        spec: &oci_spec::runtime::Spec,
        id: &str,
        status: &str,
        pid: u32,
        bundle: &Path,
    ) -> State {
        State {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status: status.to_string(),
            pid,
            bundle: bundle.to_string_lossy().into_owned(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The command a hook runs (argv[0] from `args` when given, as the spec says), and its timeout.
pub fn command(hook: &Hook) -> (Command, Option<Duration>) {
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some(arg0) = args.first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0);
    }
    cmd.args(args.iter().skip(1));
    cmd.env_clear();
    for kv in hook.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    (cmd, timeout)
}

/// Runs hooks in order with plain `wait`: for a process that has no reaper of its own (the
/// container's setup process). The first failure stops the sequence.
pub fn run_blocking(hooks: &[Hook], state: &State, stage: &str) -> Result<()> {
    let input = state.to_json();
    for hook in hooks {
        let (mut cmd, timeout) = command(hook);
        let name = hook.path().display().to_string();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Hook(format!("{stage} hook {name}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(Error::Hook(format!("{stage} hook {name}: {e}"))),
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Hook(format!("{stage} hook {name} timed out")));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(Error::Hook(format!(
                "{stage} hook {name} failed ({status}): {}",
                err.trim()
            )));
        }
    }
    Ok(())
}
