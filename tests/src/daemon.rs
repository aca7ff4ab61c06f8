//! A private containerd: own config, root, state, sockets and log, in a fresh
//! short temp directory. Torn down on drop (and at process exit for the
//! shared instance); directories left by a killed earlier run are cleaned up
//! when the next one starts.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::cmd::{self, CmdOutput};
use crate::image::{self, BuiltImage};
use crate::procfs;
use crate::runtime::{
    self, OUR_PROCESS_RUNTIME_NAME_BINARY, OUR_PROCESS_SHIM_BINARY, OUR_RUNTIME_NAME_BINARY,
    OUR_SHIM_BINARY, OUR_VM_RUNTIME_NAME_BINARY, OUR_VM_SHIM_BINARY,
};
use crate::util::{tail_lines, wait_for};
use crate::version::{self, ContainerdBins};

/// Prefix of every temp directory the harness creates (kept short: unix socket
/// paths inside the state dir must stay below ~108 bytes).
pub const TMP_PREFIX: &str = "/tmp/sh-e2e-";

/// A running private containerd.
pub struct PrivateContainerd {
    /// The temp directory holding everything below.
    pub dir: PathBuf,
    /// containerd's `root` (content, snapshots, metadata).
    pub root: PathBuf,
    /// containerd's `state` (bundles live in `<state>/io.containerd.runtime.v2.task`).
    pub state: PathBuf,
    /// The grpc socket; the ttrpc one is this plus ".ttrpc".
    pub address: PathBuf,
    /// containerd's stdout+stderr.
    pub log: PathBuf,
    /// Directory first on containerd's PATH, holding links to our shim.
    pub bin_dir: PathBuf,
    /// `ctr --fifo-dir`.
    pub fifo_dir: PathBuf,
    /// Per-test scratch space (`<dir>/w/<namespace>`).
    pub work_dir: PathBuf,
    /// The busybox image.
    pub image: BuiltImage,
    /// Our shim binary, or why it is unavailable.
    pub our_shim: Result<PathBuf, String>,
    pub our_process_shim: Result<PathBuf, String>,
    pub our_vm_shim: Result<PathBuf, String>,
    /// The containerd, ctr and reference shim in use (`E2E_CONTAINERD`).
    pub bins: ContainerdBins,
    child: Mutex<Option<Child>>,
    torn_down: AtomicBool,
}

fn mkdtemp(prefix: &str) -> Result<PathBuf, String> {
    let template = CString::new(format!("{prefix}XXXXXX")).expect("no NUL in the template");
    let mut buf = template.into_bytes_with_nul();
    let p = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(format!(
            "mkdtemp {prefix}XXXXXX: {}",
            std::io::Error::last_os_error()
        ));
    }
    buf.pop();
    Ok(PathBuf::from(
        String::from_utf8(buf).expect("mkdtemp returns the template bytes"),
    ))
}

impl PrivateContainerd {
    /// Start a new private containerd. Cleans up leftovers of dead earlier runs first.
    pub fn start() -> Result<PrivateContainerd, String> {
        crate::deps::ensure_deps();
        let bins = version::selected().clone();
        cleanup_stale_dirs();
        let dir = mkdtemp(TMP_PREFIX)?;
        let d = PrivateContainerd {
            root: dir.join("r"),
            state: dir.join("s"),
            address: dir.join("c.sock"),
            log: dir.join("containerd.log"),
            bin_dir: dir.join("bin"),
            fifo_dir: dir.join("fifo"),
            work_dir: dir.join("w"),
            image: BuiltImage {
                archive: PathBuf::new(),
                rootfs: PathBuf::new(),
            },
            our_shim: runtime::find_our_shim(),
            our_process_shim: runtime::find_our_process_shim(),
            our_vm_shim: runtime::find_our_vm_shim(),
            bins,
            child: Mutex::new(None),
            torn_down: AtomicBool::new(false),
            dir,
        };
        // From here on, `d` is torn down on drop if anything fails.
        let mut d = d;
        d.prepare()?;
        d.spawn()?;
        Ok(d)
    }

    fn prepare(&mut self) -> Result<(), String> {
        let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
        std::fs::write(
            self.dir.join("owner.pid"),
            format!("{}\n", std::process::id()),
        )
        .map_err(|err| e("owner.pid", err))?;
        for d in [
            &self.root,
            &self.state,
            &self.bin_dir,
            &self.fifo_dir,
            &self.work_dir,
            &self.dir.join("opt"),
            &self.dir.join("img"),
        ] {
            std::fs::create_dir_all(d).map_err(|err| e(&d.display().to_string(), err))?;
        }
        eprintln!(
            "shim-e2e: containerd {} (E2E_CONTAINERD): {} [{}]; ctr {}; reference shim {}",
            self.bins.version.name(),
            self.bins.containerd().display(),
            self.bins.version_string,
            self.bins.ctr().display(),
            self.bins.reference_shim().display(),
        );
        match &self.our_shim {
            Ok(shim) => eprintln!("shim-e2e: our shim under test: {}", shim.display()),
            Err(e) => eprintln!("shim-e2e: {e}"),
        }
        if let Ok(shim) = &self.our_shim {
            for name in [OUR_SHIM_BINARY, OUR_RUNTIME_NAME_BINARY] {
                std::os::unix::fs::symlink(shim, self.bin_dir.join(name))
                    .map_err(|err| e("linking our shim", err))?;
            }
        }
        if let Ok(shim) = &self.our_process_shim {
            for name in [OUR_PROCESS_SHIM_BINARY, OUR_PROCESS_RUNTIME_NAME_BINARY] {
                std::os::unix::fs::symlink(shim, self.bin_dir.join(name))
                    .map_err(|err| e("linking our process shim", err))?;
            }
        }
        if let Ok(shim) = &self.our_vm_shim {
            for name in [OUR_VM_SHIM_BINARY, OUR_VM_RUNTIME_NAME_BINARY] {
                std::os::unix::fs::symlink(shim, self.bin_dir.join(name))
                    .map_err(|err| e("linking our VM shim", err))?;
            }
        }
        runtime::write_runtime_configs(&self.dir).map_err(|err| e("runtime configs", err))?;
        self.write_oci_wrappers()
            .map_err(|err| e("OCI runtime wrappers", err))?;
        self.image = image::build(&self.dir.join("img"), &crate::deps::busybox_path())?;
        // CRI is not needed (and would touch host paths); its plugin ids differ
        // in 2.x. NRI (enabled by default in 2.x) listens on a host-wide socket.
        // `version = 2` configs still load in 2.x (migrated on the fly).
        let disabled = match self.bins.version {
            version::ContainerdVersion::V1_6 => r#"["io.containerd.grpc.v1.cri"]"#,
            version::ContainerdVersion::V1_7 => {
                r#"["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"]"#
            }
            version::ContainerdVersion::V2_1 => {
                r#"["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]"#
            }
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = {disabled}

[grpc]
  address = "{address}"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = self.root.display(),
            state = self.state.display(),
            address = self.address.display(),
            opt = self.dir.join("opt").display(),
        );
        std::fs::write(self.dir.join("config.toml"), config)
            .map_err(|err| e("config.toml", err))?;
        Ok(())
    }

    /// Put `runc` and `crun` wrappers first on containerd's PATH (hence the
    /// shims'): each appends its argv to [`Self::oci_calls_log`] and execs the
    /// real binary, so a scenario can see which OCI runtime a shim ran.
    ///
    /// containerd 1.7.24 and 2.1 write `"ociVersion":"1.2.x"` specs, which
    /// crun 1.8 (runtime-spec 1.0/1.1) refuses outright: `unknown version
    /// specified`. With such a crun and a non-system containerd, the crun
    /// wrapper relabels the bundle's spec as 1.1.0 before running crun (the
    /// content ctr generates uses nothing newer); see [`crun_needs_spec_relabel`].
    fn write_oci_wrappers(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for name in ["runc", "crun"] {
            let Some(real) = crate::util::which(name) else {
                continue;
            };
            let relabel = if name == "crun" && !self.bins.system && crun_needs_spec_relabel(&real) {
                concat!(
                    "bundle=; prev=\n",
                    "for a in \"$@\"; do\n",
                    "  case \"$prev\" in --bundle|-b) bundle=$a;; esac\n",
                    "  case \"$a\" in --bundle=*) bundle=${a#--bundle=};; esac\n",
                    "  prev=$a\n",
                    "done\n",
                    "if [ -n \"$bundle\" ] && [ -f \"$bundle/config.json\" ]; then\n",
                    "  sed -i -E 's/\"ociVersion\": *\"1\\.[2-9][^\"]*\"/\"ociVersion\":\"1.1.0\"/' \"$bundle/config.json\"\n",
                    "fi\n",
                )
            } else {
                ""
            };
            let script = format!(
                "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> {log}\n{relabel}exec {real} \"$@\"\n",
                log = crate::util::shell_quote(&self.oci_calls_log().display().to_string()),
                real = crate::util::shell_quote(&real.display().to_string()),
            );
            let path = self.bin_dir.join(name);
            std::fs::write(&path, script)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }

    /// Where the `runc`/`crun` wrappers record their calls, one line each:
    /// `<runtime> <args...>`.
    pub fn oci_calls_log(&self) -> PathBuf {
        self.dir.join("oci-calls.log")
    }

    fn spawn(&self) -> Result<(), String> {
        // Appended to across restarts, so log offsets stay valid.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        // Our shim's dir, then the selected containerd's own bin dir (so
        // `io.containerd.runc.v2` is that version's Go shim), then the rest.
        let version_dir = if self.bins.system {
            String::new()
        } else {
            format!("{}:", self.bins.bin_dir.display())
        };
        let path = format!(
            "{}:{version_dir}{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string())
                + ":/usr/local/sbin:/usr/sbin:/sbin"
        );
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(self.bins.containerd())
                .arg("--config")
                .arg(self.dir.join("config.toml"))
                .current_dir(&self.dir)
                .env("PATH", path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("spawning containerd: {e}"))?
        };
        std::fs::write(self.dir.join("containerd.pid"), format!("{}\n", child.id()))
            .map_err(|e| format!("containerd.pid: {e}"))?;
        *self.child.lock().expect("child lock") = Some(child);
        let ready = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            if let Some(c) = self.child.lock().expect("child lock").as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(Err(format!("containerd exited early: {st}")));
                }
            }
            let out = self.ctr_raw(None, &["version"], Duration::from_secs(5));
            out.ok().then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("{e}\n{}", self.log_tail(40, None))),
            None => Err(format!(
                "containerd did not answer `ctr version` within 20 s\n{}",
                self.log_tail(40, None)
            )),
        }
    }

    /// The process-wide shared daemon (one per test binary), started on first
    /// use and torn down at process exit. Tests isolate themselves with a
    /// namespace each.
    pub fn shared() -> &'static PrivateContainerd {
        static SHARED: OnceLock<Result<PrivateContainerd, String>> = OnceLock::new();
        let r = SHARED.get_or_init(|| {
            let d = PrivateContainerd::start()?;
            extern "C" fn teardown_shared() {
                if let Some(Ok(d)) = SHARED.get() {
                    d.teardown();
                }
            }
            unsafe {
                libc::atexit(teardown_shared);
            }
            Ok(d)
        });
        match r {
            Ok(d) => d,
            Err(e) => panic!("could not start the private containerd: {e}"),
        }
    }

    /// `ctr -a <address> [-n ns]`.
    pub fn ctr_base(&self, ns: Option<&str>) -> Vec<String> {
        let mut v = vec![
            self.bins.ctr().display().to_string(),
            "-a".to_string(),
            self.address.display().to_string(),
        ];
        if let Some(ns) = ns {
            v.push("-n".to_string());
            v.push(ns.to_string());
        }
        v
    }

    /// Run `ctr` with a time bound and /dev/null stdin.
    pub fn ctr_raw(&self, ns: Option<&str>, args: &[&str], limit: Duration) -> CmdOutput {
        let mut argv = self.ctr_base(ns);
        argv.extend(args.iter().map(|s| s.to_string()));
        cmd::run(&argv, limit, &[] as &[(&str, OsString)])
    }

    /// Current size of containerd's log (to show only what a test caused).
    pub fn log_offset(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The last `n` lines of containerd's log written after byte `from`,
    /// without routine debug noise (event publication, garbage collection,
    /// content and snapshot bookkeeping).
    pub fn log_tail(&self, n: usize, from: Option<u64>) -> String {
        const NOISE: &[&str] = &[
            "msg=\"event published\"",
            "msg=\"event forwarded\"",
            "garbage collected",
            "schedule snapshotter cleanup",
            "schedule content cleanup",
            "msg=\"(*service).Write started\"",
            "msg=\"remove content\"",
            "msg=\"removed content\"",
            "msg=\"stat snapshot\"",
            "msg=\"get snapshot mounts\"",
        ];
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = (from.unwrap_or(0) as usize).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !NOISE.iter().any(|x| l.contains(x)))
            .collect();
        format!(
            "--- containerd log ({}), last {n} lines{} without routine debug noise ---\n{}\n---",
            self.log.display(),
            if from.is_some() {
                " since the test started"
            } else {
                ""
            },
            tail_lines(&kept.join("\n"), n)
        )
    }

    /// containerd's whole log (stdout+stderr) written after byte `from`.
    pub fn log_since(&self, from: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = (from as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// The socket containerd's Go shims (every version) listen on for `key`
    /// (the container id, or the group of a pod) in `ns`:
    /// `/run/containerd/s/<sha256("<grpc address>/<ns>/<key>")>`, and, for
    /// the debug socket 2.x shims open under `-debug`, the same with `/debug`
    /// appended before hashing.
    pub fn go_shim_socket(&self, ns: &str, key: &str, debug: bool) -> PathBuf {
        let mut path = format!("{}/{ns}/{key}", self.address.display());
        if debug {
            path.push_str("/debug");
        }
        Path::new("/run/containerd/s").join(crate::util::sha256_hex(path.as_bytes()))
    }

    /// Record a namespace so teardown removes its cgroups and runtime state.
    pub fn register_namespace(&self, ns: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("namespaces"))
        {
            let _ = writeln!(f, "{ns}");
        }
    }

    /// The bundle directory of container `id` in `ns`.
    pub fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
    }

    /// The ttrpc address of the shim serving container `id` in `ns`, without
    /// `unix://`: see [`bundle_address`].
    pub fn shim_address(&self, ns: &str, id: &str) -> Option<String> {
        bundle_address(&self.bundle(ns, id))
    }

    /// Whether the containerd process is running.
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .expect("child lock")
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of the running containerd, if any.
    pub fn pid(&self) -> Option<u32> {
        let mut guard = self.child.lock().expect("child lock");
        let c = guard.as_mut()?;
        matches!(c.try_wait(), Ok(None)).then(|| c.id())
    }

    /// Stop containerd (SIGTERM; SIGKILL after 10 s) and wait for it to be
    /// gone, leaving its root, state, shims and containers as they are.
    /// Only for a daemon one test owns: every other user loses it meanwhile.
    pub fn stop(&self) -> Result<(), String> {
        let mut guard = self.child.lock().expect("child lock");
        let Some(mut c) = guard.take() else {
            return Err("containerd is not running".to_string());
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let exited = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            matches!(c.try_wait(), Ok(Some(_))).then_some(())
        });
        if exited.is_none() {
            let _ = c.kill();
            let _ = c.wait();
            return Err("containerd ignored SIGTERM for 10 s; killed it".to_string());
        }
        Ok(())
    }

    /// Start containerd again with the same config, root, state and socket
    /// (after [`Self::stop`]); returns once it answers `ctr version`.
    pub fn restart(&self) -> Result<(), String> {
        if self.torn_down.load(Ordering::SeqCst) {
            return Err("the daemon was torn down".to_string());
        }
        if self.is_running() {
            return Err("containerd is still running".to_string());
        }
        self.spawn()
    }

    /// Stop containerd and remove everything it left. Idempotent.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(mut guard) = self.child.lock() {
            if let Some(mut c) = guard.take() {
                stop_child(&mut c);
            }
        }
        teardown_dir(&self.dir);
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn stop_child(c: &mut Child) {
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let exited = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        matches!(c.try_wait(), Ok(Some(_))).then_some(())
    });
    if exited.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Whether `crun --version` reports runtime-spec 1.0 or 1.1 support (crun
/// before 1.9 prints `spec: 1.0.0`), i.e. it refuses 1.2.x specs.
pub fn crun_needs_spec_relabel(crun: &Path) -> bool {
    let out = Command::new(crun).arg("--version").output();
    let Ok(out) = out else { return false };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("spec:"))
        .map(str::trim)
        .is_some_and(|v| v.starts_with("1.0") || v.starts_with("1.1"))
}

/// Remove everything under a harness temp dir: containerd (by its pid file),
/// leftover shims (argv mentions the dir), container processes and cgroups of
/// the recorded namespaces, shim sockets, runtime state, mounts, the dir.
pub fn teardown_dir(dir: &Path) {
    let dir_s = dir.display().to_string();
    // containerd, if still running (a stale dir from a killed run).
    if let Some(pid) = std::fs::read_to_string(dir.join("containerd.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        if procfs::alive(pid) && procfs::cmdline(pid).iter().any(|a| a.contains(&dir_s)) {
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
            if wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
                (!procfs::alive(pid)).then_some(())
            })
            .is_none()
            {
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
    // Shims and anything else whose argv mentions our directory.
    let me = std::process::id();
    for pid in procfs::all_pids() {
        if pid != me && procfs::cmdline(pid).iter().any(|a| a.contains(&dir_s)) {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
    // Container processes and cgroups of our namespaces.
    let namespaces: Vec<String> = std::fs::read_to_string(dir.join("namespaces"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    for ns in &namespaces {
        for cg in procfs::cgroup_dirs(ns) {
            procfs::kill_and_remove_cgroup(&cg);
        }
        // The reference shim's runc state.
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(ns));
    }
    // Shim sockets recorded in bundles (a killed shim leaves its socket).
    let tasks = dir.join("s/io.containerd.runtime.v2.task");
    for ns in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        for bundle in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Some(p) = bundle_address(&bundle.path()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    unmount_under(dir);
    if std::env::var_os("E2E_KEEP_DIR").is_some() {
        eprintln!("shim-e2e: E2E_KEEP_DIR set, keeping {}", dir.display());
        return;
    }
    for _ in 0..3 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        unmount_under(dir);
    }
}

/// The unix socket path of the shim serving a bundle: its `address` file
/// (written by the shim: 1.6, 1.7, our shim everywhere), else the `address`
/// of containerd 2.x's `bootstrap.json`. `unix://` is stripped.
pub fn bundle_address(bundle: &Path) -> Option<String> {
    let raw = std::fs::read_to_string(bundle.join("address"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let text = std::fs::read_to_string(bundle.join("bootstrap.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v.get("address")?.as_str().map(str::to_string)
        })?;
    raw.strip_prefix("unix://").map(str::to_string)
}

/// Lazily unmount every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut mps: Vec<String> = procfs::mounts_under(dir)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mps.dedup();
    for mp in mps {
        if let Ok(c) = CString::new(mp) {
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Tear down harness temp dirs whose owning test process is gone.
pub fn cleanup_stale_dirs() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    let prefix = TMP_PREFIX.trim_start_matches("/tmp/");
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) || name.len() != prefix.len() + 6 {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        match owner {
            Some(pid) if procfs::alive(pid) => continue,
            None => {
                // Being created right now, or garbage: only reap it when old.
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(600));
                if !old {
                    continue;
                }
            }
            Some(_) => {}
        }
        eprintln!(
            "shim-e2e: cleaning up {} left by a dead run",
            e.path().display()
        );
        teardown_dir(&e.path());
    }
}
