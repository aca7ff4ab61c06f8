//! The process shim's runtime: the shim itself creates the container (through the `container`
//! library's setup process), owns its cgroup, and signals, freezes and lists it directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use container::cgroups::Cgroup;
use container::hooks::State;
use container::init::{SetupConfig, SetupMode};
use container::launch::{Launched, Launcher, Stdio3};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{Hook, LinuxResources, Spec};
use serde::{Deserialize, Serialize};
use shim_common::bundle::Bundle;
use shim_common::reaper::{Reaper, Subscription};
use shim_common::stdio::ProcessIo;
use shim_common::{ContainerInfo, Error, Result, Runtime, RuntimeContext, Spawned, Target};

type HookPick = fn(&oci_spec::runtime::Hooks) -> Option<Vec<Hook>>;

/// The argument that puts this binary in container-setup mode.
pub const SETUP_ARG: &str = "__container_setup";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const STATE_FILE: &str = "process-state.json";

/// What `shim delete` needs after the daemon is gone; kept in the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    init_pid: u32,
    cgroups_path: Option<String>,
}

struct Native {
    spec: Spec,
    cgroup: Option<Cgroup>,
    /// The created init, waiting for Start.
    pending: Option<Launched>,
    init_pid: u32,
}

pub struct ProcessRuntime {
    reaper: Arc<Reaper>,
    launcher: Launcher,
    containers: Mutex<HashMap<String, Native>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spec and setup errors, typed as containerd expects: a bad spec is the caller's mistake.
fn typed(e: container::Error) -> Error {
    match e {
        container::Error::Spec(m) => Error::InvalidArgument(m),
        other => Error::Runtime(other.to_string()),
    }
}

fn cgroup_err(e: container::cgroups::CgroupError) -> Error {
    Error::Runtime(format!("cgroup: {e}"))
}

fn cgroups_path(spec: &Spec, namespace: &str, id: &str) -> String {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("/{namespace}/{id}"))
}

fn signal(pid: u32, sig: u32) -> Result<()> {
    let s = Signal::try_from(sig as i32)
        .map_err(|_| Error::InvalidArgument(format!("invalid signal {sig}")))?;
    match kill(Pid::from_raw(pid as i32), s) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ESRCH) => Err(Error::NotFound("process already finished".into())),
        Err(e) => Err(Error::sys(format!("signalling {pid}"), e)),
    }
}

impl ProcessRuntime {
    /// Runs hooks through the daemon's reaper, the state on stdin, each within its timeout.
    async fn run_hooks(&self, hooks: &[Hook], state: &State, stage: &str) -> Result<()> {
        let input = state.to_json();
        for hook in hooks {
            let (mut cmd, timeout) = container::hooks::command(hook);
            let name = hook.path().display().to_string();
            let mut spawned = self.reaper.spawn(&mut cmd)?;
            if let Some(mut stdin) = spawned.child.stdin.take() {
                use std::io::Write;
                let _ = stdin.write_all(&input);
            }
            let pid = spawned.child.id();
            let exit = match timeout {
                Some(t) => match tokio::time::timeout(t, spawned.wait()).await {
                    Ok(e) => e,
                    Err(_) => {
                        let _ = signal(pid, libc::SIGKILL as u32);
                        return Err(Error::Runtime(format!("{stage} hook {name} timed out")));
                    }
                },
                None => spawned.wait().await,
            };
            if exit.status != 0 {
                return Err(Error::Runtime(format!(
                    "{stage} hook {name} failed with status {}",
                    exit.status
                )));
            }
        }
        Ok(())
    }

    fn spec_hooks(spec: &Spec, pick: HookPick) -> Vec<Hook> {
        spec.hooks().as_ref().and_then(pick).unwrap_or_default()
    }
}

/// Kills whatever is left in `cg` and removes it, retrying while the killed processes exit
/// (rmdir refuses a cgroup that still has tasks).
async fn destroy_cgroup(cg: &Cgroup) -> container::cgroups::Result<()> {
    let mut last = Ok(());
    for _ in 0..100 {
        let _ = cg.kill_all(libc::SIGKILL);
        last = cg.delete();
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

fn stdio3(io: ProcessIo) -> Stdio3 {
    Stdio3 {
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    const NAME: &'static str = "process";

    fn new(ctx: RuntimeContext) -> Result<Self> {
        let program = PathBuf::from("/proc/self/exe");
        Ok(ProcessRuntime {
            reaper: ctx.reaper,
            launcher: Launcher {
                program,
                args: vec![SETUP_ARG.to_string()],
                // Re-executes as before: on a host without emulation that costs little, and
                // nothing promises the daemon stays single-threaded.
                fork_when_single_threaded: false,
            },
            containers: Mutex::new(HashMap::new()),
        })
    }

    fn exits(&self) -> Subscription {
        self.reaper.subscribe()
    }

    async fn create(&self, c: &ContainerInfo, io: ProcessIo) -> Result<Spawned> {
        if c.checkpoint.is_some() {
            return Err(Error::Unimplemented(
                "the process shim cannot restore checkpoints".into(),
            ));
        }
        let spec = container::init::load_spec(c.bundle.path()).map_err(typed)?;
        let Some(process) = spec.process() else {
            return Err(Error::InvalidArgument("the spec has no process".into()));
        };
        // Refuse a bad process before anything exists, as the caller's mistake.
        container::process::validate(&spec, process).map_err(typed)?;
        let path = cgroups_path(&spec, &c.namespace, &c.id);
        let cgroup = Cgroup::create(Path::new(CGROUP_ROOT), &path).map_err(cgroup_err)?;
        let result = async {
            // No device list means runc's defaults (deny all but the standard devices), not
            // "leave device access open".
            let mut res = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .unwrap_or_default();
            if res.devices().is_none() {
                res.set_devices(Some(Vec::new()));
            }
            cgroup.apply(&res).map_err(cgroup_err)?;
            let config = SetupConfig {
                id: c.id.clone(),
                bundle: c.bundle.path().to_path_buf(),
                mode: SetupMode::Create,
                terminal: io.terminal,
                no_pivot: c
                    .settings
                    .get("no_pivot_root")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            };
            let hooks_spec = spec.clone();
            let id = c.id.clone();
            let bundle = c.bundle.path().to_path_buf();
            let launched = self
                .launcher
                .launch(config, &spec, Some(&cgroup), stdio3(io), |pid| async move {
                    let state = State::new(&hooks_spec, &id, "creating", pid, &bundle);
                    let stages: [(&str, HookPick); 2] = [
                        ("prestart", |h| h.prestart().clone()),
                        ("createRuntime", |h| h.create_runtime().clone()),
                    ];
                    for (stage, pick) in stages {
                        let hooks = Self::spec_hooks(&hooks_spec, pick);
                        self.run_hooks(&hooks, &state, stage)
                            .await
                            .map_err(|e| container::Error::Hook(e.to_string()))?;
                    }
                    Ok(())
                })
                .await
                .map_err(typed)?;
            Ok::<_, Error>(launched)
        }
        .await;
        let mut launched = match result {
            Ok(l) => l,
            Err(e) => {
                // The setup process may still be exiting: removal waits for it.
                if let Err(ce) = destroy_cgroup(&cgroup).await {
                    log::warn!("container {}: removing its cgroup: {ce}", c.id);
                }
                return Err(e);
            }
        };
        for w in &launched.warnings {
            log::warn!("container {}: {w}", c.id);
        }
        let pid = launched.pid;
        let console = launched.console.take();
        let persisted = Persisted {
            init_pid: pid,
            cgroups_path: Some(path),
        };
        if let Ok(data) = serde_json::to_vec(&persisted) {
            c.bundle.write_file(STATE_FILE, &data)?;
        }
        lock(&self.containers).insert(
            c.id.clone(),
            Native {
                spec,
                cgroup: Some(cgroup),
                pending: Some(launched),
                init_pid: pid,
            },
        );
        Ok(Spawned { pid, console })
    }

    async fn start(&self, c: &ContainerInfo) -> Result<Option<Spawned>> {
        let (pending, spec, pid) = {
            let mut map = lock(&self.containers);
            let n = map
                .get_mut(&c.id)
                .ok_or_else(|| Error::NotFound(format!("container {} not found", c.id)))?;
            (n.pending.take(), n.spec.clone(), n.init_pid)
        };
        let launched = pending.ok_or_else(|| {
            Error::FailedPrecondition(format!("container {} is already started", c.id))
        })?;
        launched.start().await.map_err(typed)?;
        let hooks = Self::spec_hooks(&spec, |h| h.poststart().clone());
        if !hooks.is_empty() {
            let state = State::new(&spec, &c.id, "running", pid, c.bundle.path());
            if let Err(e) = self.run_hooks(&hooks, &state, "poststart").await {
                log::warn!("container {}: {e}", c.id);
            }
        }
        Ok(None)
    }

    async fn exec(
        &self,
        c: &ContainerInfo,
        _exec_id: &str,
        process: &[u8],
        io: ProcessIo,
    ) -> Result<Spawned> {
        let process: serde_json::Value = serde_json::from_slice(process)
            .map_err(|e| Error::InvalidArgument(format!("exec process: {e}")))?;
        let parsed: oci_spec::runtime::Process = serde_json::from_value(process.clone())
            .map_err(|e| Error::InvalidArgument(format!("exec process: {e}")))?;
        let (spec, init_pid, cg_path) = {
            let map = lock(&self.containers);
            let n = map
                .get(&c.id)
                .ok_or_else(|| Error::NotFound(format!("container {} not found", c.id)))?;
            (
                n.spec.clone(),
                n.init_pid,
                n.cgroup.as_ref().map(|g| g.path().to_string()),
            )
        };
        container::process::validate(&spec, &parsed).map_err(typed)?;
        let cgroup = cg_path
            .map(|p| Cgroup::open(Path::new(CGROUP_ROOT), &p))
            .transpose()
            .map_err(cgroup_err)?;
        let config = SetupConfig {
            id: c.id.clone(),
            bundle: c.bundle.path().to_path_buf(),
            mode: SetupMode::Exec { init_pid, process },
            terminal: io.terminal,
            no_pivot: false,
        };
        let mut launched = self
            .launcher
            .launch(config, &spec, cgroup.as_ref(), stdio3(io), |_| async {
                Ok(())
            })
            .await
            .map_err(typed)?;
        Ok(Spawned {
            pid: launched.pid,
            console: launched.console.take(),
        })
    }

    async fn kill(&self, c: &ContainerInfo, target: Target<'_>, sig: u32, all: bool) -> Result<()> {
        match target {
            Target::Exec { pid, .. } => signal(pid, sig),
            Target::Init { pid } if !all => {
                signal(pid, sig)?;
                // A task of a frozen v1 cgroup does not die until thawed: a SIGKILLed paused
                // container is thawed so it does (runc does the same).
                if sig == libc::SIGKILL as u32 {
                    let _ = self.with_cgroup(c, |g| if g.is_frozen() { g.thaw() } else { Ok(()) });
                }
                Ok(())
            }
            Target::Init { pid } => {
                let cg_path = lock(&self.containers)
                    .get(&c.id)
                    .and_then(|n| n.cgroup.as_ref().map(|g| g.path().to_string()));
                match cg_path {
                    Some(p) => Cgroup::open(Path::new(CGROUP_ROOT), &p)
                        .and_then(|g| g.kill_all(sig as i32))
                        .map_err(cgroup_err),
                    None => signal(pid, sig),
                }
            }
        }
    }

    async fn delete(&self, c: &ContainerInfo) -> Result<()> {
        let native = lock(&self.containers).remove(&c.id);
        let Some(mut native) = native else {
            return Ok(());
        };
        // A created but never started init learns of it when its channel closes, and exits;
        // kill it anyway, it must not outlive Delete.
        native.pending.take();
        let _ = signal(native.init_pid, libc::SIGKILL as u32);
        if let Some(cg) = &native.cgroup {
            destroy_cgroup(cg).await.map_err(cgroup_err)?;
        }
        let hooks = Self::spec_hooks(&native.spec, |h| h.poststop().clone());
        if !hooks.is_empty() {
            let state = State::new(&native.spec, &c.id, "stopped", 0, c.bundle.path());
            if let Err(e) = self.run_hooks(&hooks, &state, "poststop").await {
                log::warn!("container {}: {e}", c.id);
            }
        }
        c.bundle.remove_file(STATE_FILE);
        Ok(())
    }

    async fn pause(&self, c: &ContainerInfo) -> Result<()> {
        self.with_cgroup(c, |g| g.freeze())
    }

    async fn resume(&self, c: &ContainerInfo) -> Result<()> {
        self.with_cgroup(c, |g| g.thaw())
    }

    async fn pids(&self, c: &ContainerInfo, init_pid: u32) -> Result<Vec<u32>> {
        match self.with_cgroup(c, |g| g.pids()) {
            Ok(p) => Ok(p),
            Err(_) if init_pid > 0 => Ok(vec![init_pid]),
            Err(e) => Err(e),
        }
    }

    async fn update(&self, c: &ContainerInfo, resources: &[u8]) -> Result<()> {
        let res: LinuxResources = serde_json::from_slice(resources)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        self.with_cgroup(c, |g| g.apply(&res))
    }

    fn cleanup(bundle: &Bundle, _id: &str, _namespace: &str) -> Result<Option<u32>> {
        let Some(data) = bundle.read_file(STATE_FILE) else {
            return Ok(None);
        };
        let p: Persisted = serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("reading {STATE_FILE}: {e}")))?;
        if let Some(path) = &p.cgroups_path {
            if let Ok(cg) = Cgroup::open(Path::new(CGROUP_ROOT), path) {
                let _ = cg.kill_all(libc::SIGKILL);
                for _ in 0..50 {
                    if cg.delete().is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = signal(p.init_pid, libc::SIGKILL as u32);
        bundle.remove_file(STATE_FILE);
        Ok(Some(p.init_pid))
    }
}

impl ProcessRuntime {
    fn with_cgroup<T>(
        &self,
        c: &ContainerInfo,
        f: impl FnOnce(&Cgroup) -> container::cgroups::Result<T>,
    ) -> Result<T> {
        let map = lock(&self.containers);
        let cg = map
            .get(&c.id)
            .and_then(|n| n.cgroup.as_ref())
            .ok_or_else(|| Error::NotFound(format!("container {} has no cgroup", c.id)))?;
        f(cg).map_err(cgroup_err)
    }
}
