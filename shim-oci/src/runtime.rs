//! The oci shim's runtime: every operation is one call of an OCI runtime CLI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shim_common::bundle::Bundle;
use shim_common::reaper::{Reaper, Subscription};
use shim_common::stdio::ProcessIo;
use shim_common::{ContainerInfo, Error, Result, Runtime, RuntimeContext, Spawned, Target};

use crate::cli::{pid_file, read_pid, CallIo, OciCli};
use crate::console::ConsoleSocket;
use crate::settings::OciSettings;

pub struct OciRuntime {
    reaper: Arc<Reaper>,
    settings: Mutex<HashMap<String, OciSettings>>,
}

impl OciRuntime {
    fn settings(&self, c: &ContainerInfo) -> Result<OciSettings> {
        if let Some(s) = self
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.id)
        {
            return Ok(s.clone());
        }
        OciSettings::resolve(&c.bundle, &c.settings, &c.options)
    }

    async fn call(
        &self,
        c: &ContainerInfo,
        args: &[&str],
        io: Option<CallIo>,
        capture: bool,
    ) -> Result<Vec<u8>> {
        let settings = self.settings(c)?;
        let cli = OciCli {
            settings: &settings,
            dir: c.bundle.path(),
        };
        cli.run(Some(&self.reaper), args, io, capture).await
    }

    /// Runs a call that starts a process, with its stdio or its console socket.
    async fn spawn(
        &self,
        c: &ContainerInfo,
        mut args: Vec<String>,
        tag: &str,
        io: ProcessIo,
    ) -> Result<Spawned> {
        let console = if io.terminal {
            Some(ConsoleSocket::listen(c.bundle.path(), tag)?)
        } else {
            None
        };
        if let Some(cs) = &console {
            let at = args.len() - 1;
            args.insert(at, "--console-socket".into());
            args.insert(at + 1, cs.name.clone());
        }
        let call_io = CallIo {
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.call(c, &argv, Some(call_io), false).await?;
        let pid = read_pid(&pid_file(c.bundle.path(), tag))?;
        let console = match console {
            Some(cs) => Some(cs.master().await?),
            None => None,
        };
        Ok(Spawned { pid, console })
    }
}

fn signal_pid(pid: u32, signal: u32) -> Result<()> {
    let sig = Signal::try_from(signal as i32)
        .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ESRCH) => Err(Error::NotFound("process already finished".into())),
        Err(e) => Err(Error::sys(format!("signalling pid {pid}"), e)),
    }
}

#[async_trait]
impl Runtime for OciRuntime {
    const NAME: &'static str = "oci";

    fn new(ctx: RuntimeContext) -> Result<Self> {
        Ok(OciRuntime {
            reaper: ctx.reaper,
            settings: Mutex::new(HashMap::new()),
        })
    }

    fn exits(&self) -> Subscription {
        self.reaper.subscribe()
    }

    async fn create(&self, c: &ContainerInfo, io: ProcessIo) -> Result<Spawned> {
        let settings = OciSettings::resolve(&c.bundle, &c.settings, &c.options)?;
        settings.persist(&c.bundle)?;
        log::info!("container {} uses {}", c.id, settings.binary);
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id.clone(), settings.clone());
        let bundle = c.bundle.path().to_string_lossy().into_owned();
        let pidf = pid_file(c.bundle.path(), "init")
            .to_string_lossy()
            .into_owned();
        let mut args: Vec<String> = vec!["create".into(), "--bundle".into(), bundle];
        args.extend(["--pid-file".into(), pidf]);
        if settings.no_pivot_root {
            args.push("--no-pivot".into());
        }
        if settings.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        args.push(c.id.clone());
        let r = self.spawn(c, args, "init", io).await;
        if r.is_err() {
            // A half-created container must not outlive the failed Create.
            let _ = self
                .call(c, &["delete", "--force", &c.id], None, false)
                .await;
            self.settings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&c.id);
        }
        r
    }

    async fn start(&self, c: &ContainerInfo) -> Result<()> {
        self.call(c, &["start", &c.id], None, false).await.map(drop)
    }

    async fn exec(
        &self,
        c: &ContainerInfo,
        exec_id: &str,
        process: &[u8],
        io: ProcessIo,
    ) -> Result<Spawned> {
        let spec_path = c.bundle.file(&format!("{exec_id}.process.json"));
        std::fs::write(&spec_path, process)
            .map_err(|e| Error::path("writing exec spec", &spec_path, e))?;
        let args: Vec<String> = vec![
            "exec".into(),
            "--process".into(),
            spec_path.to_string_lossy().into_owned(),
            "--pid-file".into(),
            pid_file(c.bundle.path(), exec_id)
                .to_string_lossy()
                .into_owned(),
            "--detach".into(),
            c.id.clone(),
        ];
        let r = self.spawn(c, args, exec_id, io).await;
        let _ = std::fs::remove_file(&spec_path);
        let _ = std::fs::remove_file(pid_file(c.bundle.path(), exec_id));
        r
    }

    async fn kill(
        &self,
        c: &ContainerInfo,
        target: Target<'_>,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        match target {
            Target::Exec { pid, .. } => signal_pid(pid, signal),
            Target::Init { .. } => {
                let sig = signal.to_string();
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.extend([c.id.as_str(), sig.as_str()]);
                match self.call(c, &args, None, false).await {
                    Err(Error::NotFound(_)) | Err(Error::FailedPrecondition(_)) => {
                        Err(Error::NotFound("process already finished".into()))
                    }
                    r => r.map(drop),
                }
            }
        }
    }

    async fn delete(&self, c: &ContainerInfo) -> Result<()> {
        let r = self
            .call(c, &["delete", "--force", &c.id], None, false)
            .await;
        let settings = self.settings(c)?;
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        remove_leftovers(&c.bundle, &settings, &c.id);
        match r {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pause(&self, c: &ContainerInfo) -> Result<()> {
        self.call(c, &["pause", &c.id], None, false).await.map(drop)
    }

    async fn resume(&self, c: &ContainerInfo) -> Result<()> {
        self.call(c, &["resume", &c.id], None, false)
            .await
            .map(drop)
    }

    async fn pids(&self, c: &ContainerInfo, _init_pid: u32) -> Result<Vec<u32>> {
        let out = self
            .call(c, &["ps", "--format", "json", &c.id], None, true)
            .await?;
        let pids: Option<Vec<u32>> = serde_json::from_slice(&out)
            .map_err(|e| Error::Runtime(format!("runtime ps returned bad JSON: {e}")))?;
        Ok(pids.unwrap_or_default())
    }

    async fn update(&self, c: &ContainerInfo, resources: &[u8]) -> Result<()> {
        serde_json::from_slice::<serde_json::Value>(resources)
            .map_err(|e| Error::InvalidArgument(format!("resources are not JSON: {e}")))?;
        let path = c.bundle.file("resources.json");
        std::fs::write(&path, resources).map_err(|e| Error::path("writing", &path, e))?;
        let p = path.to_string_lossy().into_owned();
        let r = self
            .call(c, &["update", "--resources", &p, &c.id], None, false)
            .await;
        let _ = std::fs::remove_file(&path);
        r.map(drop)
    }

    fn cleanup(bundle: &Bundle, id: &str, _namespace: &str) -> Result<Option<u32>> {
        let pid = read_pid(&pid_file(bundle.path(), "init")).ok();
        let Some(settings) = OciSettings::load(bundle) else {
            return Ok(pid);
        };
        let cli = OciCli {
            settings: &settings,
            dir: bundle.path(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("building the async runtime", e))?;
        let r = rt.block_on(cli.run(None, &["delete", "--force", id], None, false));
        remove_leftovers(bundle, &settings, id);
        match r {
            Ok(_) | Err(Error::NotFound(_)) => Ok(pid),
            Err(e) => Err(e),
        }
    }

    fn features() -> Option<Vec<u8>> {
        let out = std::process::Command::new("runc")
            .arg("features")
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }
}

/// The runtime's state for `id` (when its root is ours, in the bundle) and our bookkeeping.
fn remove_leftovers(bundle: &Bundle, settings: &OciSettings, id: &str) {
    if settings.root.starts_with(bundle.path()) {
        let _ = std::fs::remove_dir_all(&settings.root);
    } else {
        let dir = settings.root.join(id);
        if dir.starts_with(&settings.root) && Path::new(&dir).exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    bundle.remove_file("init.pid");
}
