//! The oci shim's runtime: every operation is one call of an OCI runtime CLI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use shim_common::bundle::Bundle;
use shim_common::options::{CheckpointOptions, RUNC_CHECKPOINT_OPTIONS};
use shim_common::reaper::{Capture, Reaper, Subscription};
use shim_common::stdio::ProcessIo;
use shim_common::{ContainerInfo, Error, Result, Runtime, RuntimeContext, Spawned, Target};

use crate::cli::{pid_file, read_pid, CallIo, OciCli};
use crate::console::ConsoleSocket;
use crate::settings::OciSettings;

pub struct OciRuntime {
    reaper: Arc<Reaper>,
    settings: Mutex<HashMap<String, OciSettings>>,
    /// The stdio of containers that are restored from a checkpoint at Start.
    pending_restore: Mutex<HashMap<String, ProcessIo>>,
    /// Whether CRIU works on this host (`criu check`), asked once.
    criu: tokio::sync::OnceCell<std::result::Result<(), String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OciRuntime {
    /// Checkpoint and restore need CRIU; where `criu check` fails the answer is a clear
    /// FailedPrecondition with CRIU's own reason, not a half-written image.
    async fn criu_works(&self) -> Result<()> {
        let r = self
            .criu
            .get_or_init(|| async {
                let mut cmd = std::process::Command::new("criu");
                cmd.arg("check")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null());
                // criu gives its verdict on stderr.
                match self.reaper.run(&mut cmd, Capture::Stderr).await {
                    Ok(out) if out.status == 0 => Ok(()),
                    Ok(out) => Err(last_lines(&String::from_utf8_lossy(&out.output))),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        r.clone().map_err(|why| {
            Error::FailedPrecondition(format!(
                "checkpoint/restore needs CRIU, and `criu check` fails on this host: {why}"
            ))
        })
    }

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
            pending_restore: Mutex::new(HashMap::new()),
            criu: tokio::sync::OnceCell::new(),
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
        if c.checkpoint.is_some() {
            self.criu_works().await?;
            lock(&self.pending_restore).insert(c.id.clone(), io);
            return Ok(Spawned {
                pid: 0,
                console: None,
            });
        }
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

    async fn start(&self, c: &ContainerInfo) -> Result<Option<Spawned>> {
        let Some(io) = lock(&self.pending_restore).remove(&c.id) else {
            return self
                .call(c, &["start", &c.id], None, false)
                .await
                .map(|_| None);
        };
        let image = c
            .checkpoint
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args: Vec<String> = vec![
            "restore".into(),
            "--detach".into(),
            "--image-path".into(),
            image,
            "--work-path".into(),
            c.bundle.file("criu-work").to_string_lossy().into_owned(),
            "--bundle".into(),
            c.bundle.path().to_string_lossy().into_owned(),
            "--pid-file".into(),
            pid_file(c.bundle.path(), "init")
                .to_string_lossy()
                .into_owned(),
            c.id.clone(),
        ];
        self.spawn(c, args, "init", io).await.map(Some)
    }

    async fn checkpoint(&self, c: &ContainerInfo, path: &str, options: &Any) -> Result<()> {
        self.criu_works().await?;
        let opts = if options.type_url.ends_with(RUNC_CHECKPOINT_OPTIONS) {
            CheckpointOptions::parse_from_bytes(&options.value)
                .map_err(|e| Error::InvalidArgument(format!("bad checkpoint options: {e}")))?
        } else {
            CheckpointOptions::new()
        };
        let image = if opts.image_path.is_empty() {
            path.to_string()
        } else {
            opts.image_path.clone()
        };
        if image.is_empty() {
            return Err(Error::InvalidArgument(
                "checkpoint needs an image path".into(),
            ));
        }
        let work = if opts.work_path.is_empty() {
            c.bundle.file("criu-work").to_string_lossy().into_owned()
        } else {
            opts.work_path.clone()
        };
        let mut args: Vec<String> = vec![
            "checkpoint".into(),
            "--image-path".into(),
            image,
            "--work-path".into(),
            work,
        ];
        if !opts.exit {
            args.push("--leave-running".into());
        }
        for (set, flag) in [
            (opts.open_tcp, "--tcp-established"),
            (opts.external_unix_sockets, "--ext-unix-sk"),
            (opts.terminal, "--shell-job"),
            (opts.file_locks, "--file-locks"),
        ] {
            if set {
                args.push(flag.into());
            }
        }
        for ns in &opts.empty_namespaces {
            args.extend(["--empty-ns".into(), ns.clone()]);
        }
        if !opts.cgroups_mode.is_empty() {
            args.extend(["--manage-cgroups-mode".into(), opts.cgroups_mode.clone()]);
        }
        if !opts.parent_path.is_empty() {
            args.extend(["--parent-path".into(), opts.parent_path.clone()]);
        }
        args.push(c.id.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.call(c, &argv, None, false).await.map(drop)
    }

    async fn exec(
        &self,
        c: &ContainerInfo,
        exec_id: &str,
        process: &[u8],
        io: ProcessIo,
    ) -> Result<Spawned> {
        // Exec ids are the user's: prefixed, they never name the init's (or the shim's) files,
        // e.g. exec id "init" would otherwise overwrite, then remove, init.pid.
        let tag = format!("exec-{exec_id}");
        let spec_path = c.bundle.file(&format!("{tag}.process.json"));
        std::fs::write(&spec_path, process)
            .map_err(|e| Error::path("writing exec spec", &spec_path, e))?;
        let args: Vec<String> = vec![
            "exec".into(),
            "--process".into(),
            spec_path.to_string_lossy().into_owned(),
            "--pid-file".into(),
            pid_file(c.bundle.path(), &tag)
                .to_string_lossy()
                .into_owned(),
            "--detach".into(),
            c.id.clone(),
        ];
        let r = self.spawn(c, args, &tag, io).await;
        let _ = std::fs::remove_file(&spec_path);
        let _ = std::fs::remove_file(pid_file(c.bundle.path(), &tag));
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
        match r {
            Ok(_) | Err(Error::NotFound(_)) => {
                let settings = self.settings(c)?;
                lock(&self.settings).remove(&c.id);
                remove_leftovers(&c.bundle, &settings, &c.id);
                // The container is gone: without the persisted settings, the `shim delete`
                // containerd runs after every removal skips its own `<runtime> delete --force`,
                // one runtime process less on the path of every `ctr run --rm`/`task delete`.
                OciSettings::forget(&c.bundle);
                Ok(())
            }
            // Keep the runtime's state, so a retried Delete or `shim delete` can try again.
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

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join("; ")
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
