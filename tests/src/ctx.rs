//! The per-test context: one namespace in the shared containerd, the runtime
//! under test, and helpers around `ctr` that encode its quirks.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cmd::{self, CmdOutput, Running, Stdin};
use crate::daemon::PrivateContainerd;
use crate::image::IMAGE;
use crate::procfs;
use crate::runtime::{RuntimeUnderTest, Variant};
use crate::util::{random_hex, shell_join, wait_for};
use crate::version::ContainerdVersion;

/// Default time bound of one `ctr` call.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// A task as `ctr task ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

/// A process of a container, as [`Ctx::container_processes`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProcess {
    /// A host pid, or for a VM the pid inside the container's own pid namespace.
    pub pid: u32,
    pub argv: Vec<String>,
}

/// Everything a scenario needs.
pub struct Ctx {
    /// Scenario name (for messages).
    pub scenario: String,
    pub variant: Variant,
    pub rt: RuntimeUnderTest,
    /// This test's containerd namespace.
    pub ns: String,
    pub daemon: &'static PrivateContainerd,
    /// Scratch directory for this test (bind-mount sources, specs, ...).
    pub work: PathBuf,
    log_start: u64,
}

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Numbers the execs [`Ctx::sh_in`] runs (exec ids are unique per task).
static LOOK_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Lists the container's processes from inside: `self PID`, then per process `proc PID <stat>`
/// and `argv <argv with \001 between the args>`. Busybox builtins only, but for `tr`, which
/// runs as a child of the listing shell.
const LIST_PROCESSES: &str = r#"echo "self $$"
for d in /proc/[0-9]*; do
  read -r stat < "$d/stat" 2>/dev/null || continue
  echo "proc ${d#/proc/} $stat"
  echo "argv $(tr '\0' '\001' < "$d/cmdline" 2>/dev/null)"
done"#;

impl Ctx {
    /// Set up a namespace with the busybox images for `scenario` on `variant`.
    /// Panics (the test fails) if our shim is needed but not built.
    pub fn new(scenario: &str, variant: Variant) -> Ctx {
        let daemon = PrivateContainerd::shared();
        let rt = RuntimeUnderTest::new(
            variant,
            &daemon.our_shim,
            &daemon.our_process_shim,
            &daemon.our_vm_shim,
            &daemon.dir,
        )
        .unwrap_or_else(|e| panic!("variant {}: {e}", variant.name()));
        // Short on purpose: the namespace is part of bundle (socket) paths.
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let ns = format!("t{n}-{}", random_hex(3));
        daemon.register_namespace(&ns);
        let work = daemon.work_dir.join(&ns);
        std::fs::create_dir_all(&work).expect("creating the test's work dir");
        eprintln!(
            "[{scenario} / {}] namespace {ns}, runtime args {}",
            variant.name(),
            shell_join(&rt.ctr_args())
        );
        let ctx = Ctx {
            scenario: scenario.to_string(),
            variant,
            rt,
            ns,
            daemon,
            work,
            log_start: daemon.log_offset(),
        };
        let out = ctx.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
            &daemon.image.archive.display().to_string(),
        ]);
        ctx.check(&out, "importing the busybox image");
        ctx
    }

    // ---------------------------------------------------------------- ctr --

    /// `ctr -a ADDR -n NS` + args, as an argv.
    pub fn ctr_argv<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        let mut v = self.daemon.ctr_base(Some(&self.ns));
        v.extend(args.iter().map(|s| s.as_ref().to_string()));
        v
    }

    /// Run `ctr ARGS` (stdin /dev/null, default time bound).
    pub fn ctr<S: AsRef<str>>(&self, args: &[S]) -> CmdOutput {
        self.ctr_timeout(CTR_TIMEOUT, args)
    }

    /// Run `ctr ARGS` with time bound `limit`.
    pub fn ctr_timeout<S: AsRef<str>>(&self, limit: Duration, args: &[S]) -> CmdOutput {
        cmd::run(&self.ctr_argv(args), limit, &[] as &[(&str, OsString)])
    }

    /// Run `ctr ARGS` and fail the test unless it exits 0.
    pub fn ctr_ok<S: AsRef<str>>(&self, args: &[S]) -> CmdOutput {
        let out = self.ctr(args);
        self.check(&out, "ctr must succeed");
        out
    }

    /// Spawn `ctr ARGS` in the background (bounded by `limit`).
    pub fn spawn_ctr<S: AsRef<str>>(&self, limit: Duration, args: &[S], stdin: Stdin) -> Running {
        Running::spawn(
            &cmd::with_timeout(limit, &self.ctr_argv(args)),
            &[] as &[(&str, OsString)],
            stdin,
        )
    }

    /// Spawn `ctr ARGS` under a pseudo-terminal: `script -qfec "<ctr ...>" /dev/null`.
    /// Output then has `\r\r\n` line ends and may start with a NUL or `^@`.
    pub fn spawn_ctr_tty<S: AsRef<str>>(
        &self,
        limit: Duration,
        args: &[S],
        stdin: Stdin,
    ) -> Running {
        // `--foreground`: a plain `timeout` moves ctr out of the terminal's
        // foreground process group, and ctr then stops (SIGTTOU) when it
        // puts the terminal in raw mode.
        let mut inner_argv = vec!["timeout".to_string(), "--foreground".to_string()];
        inner_argv.extend(
            cmd::with_timeout(limit, &self.ctr_argv(args))
                .into_iter()
                .skip(1),
        );
        let inner = shell_join(&inner_argv);
        let argv: Vec<String> = ["script", "-qfec", inner.as_str(), "/dev/null"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Running::spawn(
            &cmd::with_timeout(limit + Duration::from_secs(10), &argv),
            &[("SHELL", OsString::from("/bin/sh"))],
            stdin,
        )
    }

    // ------------------------------------------------------------ failures --

    /// Fail the test with `msg` and the scenario context.
    #[track_caller]
    pub fn fail(&self, msg: impl AsRef<str>) -> ! {
        panic!(
            "[{} / {}, namespace {}] {}",
            self.scenario,
            self.variant.name(),
            self.ns,
            msg.as_ref()
        )
    }

    /// Fail unless `out` exited 0.
    #[track_caller]
    pub fn check(&self, out: &CmdOutput, what: &str) {
        if !out.ok() {
            self.fail(format!("{what}: command failed\n{}", out.describe()));
        }
    }

    /// Fail unless `out` exited with `code`.
    #[track_caller]
    pub fn check_code(&self, out: &CmdOutput, code: i32, what: &str) {
        if out.code != code {
            self.fail(format!(
                "{what}: expected exit code {code}, got {}\n{}",
                out.code,
                out.describe()
            ));
        }
    }

    /// Fail unless `cond`; `detail` is computed only on failure.
    #[track_caller]
    pub fn ensure(&self, cond: bool, detail: impl FnOnce() -> String) {
        if !cond {
            self.fail(detail());
        }
    }

    // ------------------------------------------------------------- running --

    /// `run` + runtime selection + `--fifo-dir`, then `opts`.
    pub fn run_prefix(&self, opts: &[&str]) -> Vec<String> {
        let mut v = vec!["run".to_string()];
        v.extend(self.rt.ctr_args());
        v.push("--fifo-dir".to_string());
        v.push(self.daemon.fifo_dir.display().to_string());
        v.extend(opts.iter().map(|s| s.to_string()));
        v
    }

    /// The containerd version the suite runs (`E2E_CONTAINERD`).
    pub fn containerd_version(&self) -> ContainerdVersion {
        self.daemon.bins.version
    }

    /// `ctr container create` + runtime selection + `opts image id [--] cmd...`
    /// (ctr 1.6 needs the `--`, or it parses the command's `-c` itself).
    pub fn create_args(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> Vec<String> {
        let mut v = vec!["container".to_string(), "create".to_string()];
        v.extend(self.rt.ctr_args());
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(image.to_string());
        v.push(id.to_string());
        if self.containerd_version().create_needs_dashdash() && !cmd.is_empty() {
            v.push("--".to_string());
        }
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// The full `ctr run` args for `image id cmd...`.
    pub fn run_args(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> Vec<String> {
        let mut v = self.run_prefix(opts);
        v.push(image.to_string());
        v.push(id.to_string());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// `ctr run --rm [opts] image id cmd...` with /dev/null stdin; returns its output.
    pub fn run(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> CmdOutput {
        let mut o = vec!["--rm"];
        o.extend_from_slice(opts);
        self.ctr(&self.run_args(&o, image, id, cmd))
    }

    /// `ctr run --rm IMAGE id cmd...` in the background, stdin piped.
    pub fn spawn_run(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> Running {
        let mut o = vec!["--rm"];
        o.extend_from_slice(opts);
        self.spawn_ctr(
            CTR_TIMEOUT,
            &self.run_args(&o, image, id, cmd),
            Stdin::Piped,
        )
    }

    /// `ctr run --rm` with `input` on stdin, sent only once the task is
    /// RUNNING (ctr loses an EOF that arrives before the task exists).
    pub fn run_with_stdin(
        &self,
        opts: &[&str],
        image: &str,
        id: &str,
        cmd: &[&str],
        input: Vec<u8>,
    ) -> CmdOutput {
        let mut child = self.spawn_run(opts, image, id, cmd);
        self.wait_running_or_exit(id, &mut child);
        child.send_stdin(input);
        child.wait()
    }

    /// Wait until task `id` is RUNNING; fail if `child` (the `ctr` creating
    /// it) exits first.
    pub fn wait_running_or_exit(&self, id: &str, child: &mut Running) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = self.task(id) {
                if t.status == "RUNNING" {
                    return;
                }
            }
            if let Some(code) = child.try_wait() {
                let cmdline = child.cmdline().to_string();
                self.fail(format!(
                    "`{cmdline}` exited with {code} before task {id} was RUNNING"
                ));
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "task {id} not RUNNING within 30 s; ctr task ls:\n{}",
                    self.ctr(&["task", "ls"]).stdout_str()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `ctr run -d [opts] image id cmd...`; waits until RUNNING and returns its info.
    pub fn run_detached(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> TaskInfo {
        let mut o = vec!["-d"];
        o.extend_from_slice(opts);
        let out = self.ctr(&self.run_args(&o, image, id, cmd));
        self.check(&out, &format!("ctr run -d {id}"));
        self.wait_status(id, "RUNNING", Duration::from_secs(20))
    }

    /// A long-running detached container (`sleep 100000`) from the default image.
    pub fn run_sleeper(&self, id: &str) -> TaskInfo {
        self.run_detached(&[], IMAGE, id, &["sleep", "100000"])
    }

    /// `ctr run --rm -t` under a pty; `input` (if any) is typed once the task
    /// is RUNNING, and stdin is then kept open until the command ends.
    pub fn run_tty(
        &self,
        opts: &[&str],
        image: &str,
        id: &str,
        cmd: &[&str],
        input: Option<&[u8]>,
    ) -> CmdOutput {
        let mut o = vec!["--rm", "-t"];
        o.extend_from_slice(opts);
        let args = self.run_args(&o, image, id, cmd);
        let mut child = self.spawn_ctr_tty(CTR_TIMEOUT, &args, Stdin::Piped);
        if let Some(input) = input {
            self.wait_running_or_exit(id, &mut child);
            // Give ctr a moment to switch its terminal to raw mode.
            std::thread::sleep(Duration::from_millis(200));
            if let Err(e) = child.write_stdin_keep_open(input) {
                self.fail(format!("writing tty input: {e}"));
            }
        }
        self.finish_keeping_stdin(child)
    }

    /// Wait for a `script`-wrapped child without closing its stdin early
    /// (script may forward EOF to the terminal).
    fn finish_keeping_stdin(&self, mut child: Running) -> CmdOutput {
        wait_for(
            CTR_TIMEOUT + Duration::from_secs(15),
            Duration::from_millis(20),
            || child.try_wait(),
        );
        child.wait()
    }

    // --------------------------------------------------------------- tasks --

    /// All tasks in the namespace (`ctr task ls`).
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let out = self.ctr(&["task", "ls"]);
        self.check(&out, "ctr task ls");
        out.stdout_str()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(TaskInfo {
                    id: f.first()?.to_string(),
                    pid: f.get(1)?.parse().ok()?,
                    status: f.get(2)?.to_string(),
                })
            })
            .collect()
    }

    /// Task `id`, if it exists.
    pub fn task(&self, id: &str) -> Option<TaskInfo> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// Wait until task `id` has `status`; fail otherwise.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str, limit: Duration) -> TaskInfo {
        let mut last = None;
        let found = wait_for(limit, Duration::from_millis(25), || {
            let t = self.task(id);
            last = t.clone();
            t.filter(|t| t.status == status)
        });
        found.unwrap_or_else(|| {
            self.fail(format!(
                "task {id} did not reach {status} within {limit:?}; last seen: {last:?}"
            ))
        })
    }

    /// Pids `ctr task ps ID` lists.
    #[track_caller]
    pub fn task_pids(&self, id: &str) -> Vec<u32> {
        let out = self.ctr(&["task", "ps", id]);
        self.check(&out, &format!("ctr task ps {id}"));
        out.stdout_str()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// `ctr task kill [-a] -s SIGNAL [--exec-id E] ID`.
    pub fn kill(&self, id: &str, signal: &str, all: bool, exec_id: Option<&str>) -> CmdOutput {
        let mut args = vec!["task", "kill", "-s", signal];
        if all {
            args.push("-a");
        }
        if let Some(e) = exec_id {
            args.push("--exec-id");
            args.push(e);
        }
        args.push(id);
        self.ctr(&args)
    }

    /// SIGKILL the task, wait for STOPPED, delete task and container.
    #[track_caller]
    pub fn kill_and_remove(&self, id: &str) {
        let out = self.kill(id, "SIGKILL", false, None);
        self.check(&out, &format!("kill -s SIGKILL {id}"));
        self.wait_status(id, "STOPPED", Duration::from_secs(20));
        let out = self.ctr(&["task", "delete", id]);
        self.check(&out, &format!("task delete {id}"));
        let out = self.ctr(&["container", "rm", id]);
        self.check(&out, &format!("container rm {id}"));
    }

    /// `ctr task exec --exec-id E [opts] ID cmd...` with /dev/null stdin.
    pub fn exec(&self, id: &str, exec_id: &str, opts: &[&str], cmd: &[&str]) -> CmdOutput {
        self.ctr(&self.exec_args(id, exec_id, opts, cmd))
    }

    /// The args of `ctr task exec`.
    pub fn exec_args(&self, id: &str, exec_id: &str, opts: &[&str], cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "task".into(),
            "exec".into(),
            "--fifo-dir".into(),
            self.daemon.fifo_dir.display().to_string(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(id.to_string());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// Wait until `ctr task ps ID` lists a pid not in `before`; fail if `child`
    /// exits first. Returns the new pids.
    pub fn wait_new_pid(&self, id: &str, before: &BTreeSet<u32>, child: &mut Running) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now: Vec<u32> = self
                .task_pids(id)
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            if !now.is_empty() {
                return now;
            }
            if let Some(code) = child.try_wait() {
                let cmdline = child.cmdline().to_string();
                self.fail(format!(
                    "`{cmdline}` exited with {code} before its process appeared in ctr task ps"
                ));
            }
            if Instant::now() > deadline {
                self.fail(format!("no new process in task {id} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `ctr task exec` with `input` on stdin, sent once the exec process is
    /// listed by `ctr task ps`.
    pub fn exec_with_stdin(
        &self,
        id: &str,
        exec_id: &str,
        cmd: &[&str],
        input: Vec<u8>,
    ) -> CmdOutput {
        let before: BTreeSet<u32> = self.task_pids(id).into_iter().collect();
        let mut child = self.spawn_ctr(
            CTR_TIMEOUT,
            &self.exec_args(id, exec_id, &[], cmd),
            Stdin::Piped,
        );
        self.wait_new_pid(id, &before, &mut child);
        child.send_stdin(input);
        child.wait()
    }

    /// `ctr task exec -t` under a pty; `input` typed once the exec is listed.
    pub fn exec_tty(
        &self,
        id: &str,
        exec_id: &str,
        cmd: &[&str],
        input: Option<&[u8]>,
    ) -> CmdOutput {
        let before: BTreeSet<u32> = self.task_pids(id).into_iter().collect();
        let args = self.exec_args(id, exec_id, &["-t"], cmd);
        let mut child = self.spawn_ctr_tty(CTR_TIMEOUT, &args, Stdin::Piped);
        if let Some(input) = input {
            self.wait_new_pid(id, &before, &mut child);
            std::thread::sleep(Duration::from_millis(200));
            if let Err(e) = child.write_stdin_keep_open(input) {
                self.fail(format!("writing tty input: {e}"));
            }
        }
        self.finish_keeping_stdin(child)
    }

    // ------------------------------------------------------ container view --
    //
    // In a VM (`variant.is_vm()`) the container's processes and cgroup live in the guest: the
    // pids containerd reports are guest pids, meaningless on the host. These helpers give the
    // host's view for the other variants and the equivalent view from inside the container
    // for the VM.

    /// Run `sh -c SCRIPT` in the running container `id` (a fresh exec id) and return its
    /// stdout; fail unless it exits 0. A short sleep follows the script (ctr 1.6 may lose
    /// output written right before an exit); the script's exit status is kept.
    #[track_caller]
    pub fn sh_in(&self, id: &str, script: &str) -> String {
        let n = LOOK_COUNTER.fetch_add(1, Ordering::SeqCst);
        let wrapped = format!("{{ {script}\n}}; rc=$?; sleep 0.3; exit $rc");
        let out = self.exec(id, &format!("look{n}"), &[], &["sh", "-c", &wrapped]);
        self.check(&out, &format!("looking inside {id} with `{script}`"));
        out.stdout_str()
    }

    /// The live processes of container `id`, whose init `ctr task ls` shows as `init`. On
    /// the host: the init and its descendants, by host pid. For a VM: the container's own
    /// view (its /proc, where the init is pid 1), without the exec that looks.
    #[track_caller]
    pub fn container_processes(&self, id: &str, init: u32) -> Vec<ContainerProcess> {
        if !self.variant.is_vm() {
            return procfs::descendants(init)
                .into_iter()
                .map(|pid| ContainerProcess {
                    pid,
                    argv: procfs::cmdline(pid),
                })
                .collect();
        }
        let text = self.sh_in(id, LIST_PROCESSES);
        let mut me = None;
        // (pid, ppid, state, argv)
        let mut all: Vec<(u32, u32, String, Vec<String>)> = Vec::new();
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if let Some(p) = l.strip_prefix("self ") {
                me = p.trim().parse::<u32>().ok();
            } else if let Some(rest) = l.strip_prefix("proc ") {
                let argv_line = lines.next().unwrap_or_default();
                let argv: Vec<String> = argv_line
                    .strip_prefix("argv ")
                    .unwrap_or_default()
                    .split('\u{1}')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect();
                let Some((pid, stat)) = rest.split_once(' ') else {
                    continue;
                };
                // stat: `pid (comm) state ppid ...`; comm may hold spaces.
                let after = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
                let mut f = after.split_whitespace();
                let (Ok(pid), Some(state), Some(Ok(ppid))) =
                    (pid.parse(), f.next(), f.next().map(str::parse))
                else {
                    continue;
                };
                all.push((pid, ppid, state.to_string(), argv));
            }
        }
        let me = me.unwrap_or_else(|| self.fail(format!("no `self` line in:\n{text}")));
        // The looking shell and everything it started.
        let mut looking = vec![me];
        let mut i = 0;
        while i < looking.len() {
            let cur = looking[i];
            looking.extend(all.iter().filter(|p| p.1 == cur).map(|p| p.0));
            i += 1;
        }
        all.into_iter()
            .filter(|(pid, _, state, _)| !looking.contains(pid) && state != "Z" && state != "X")
            .map(|(pid, _, _, argv)| ContainerProcess { pid, argv })
            .collect()
    }

    /// Whether process `pid` of container `id` (a pid [`Ctx::container_processes`] returned)
    /// is alive.
    pub fn container_pid_alive(&self, id: &str, init: u32, pid: u32) -> bool {
        if !self.variant.is_vm() {
            return procfs::alive(pid);
        }
        self.container_processes(id, init)
            .iter()
            .any(|p| p.pid == pid)
    }

    /// Whether `pid`, as `ctr task ls` / `ctr task ps` report it for task `id`, is alive: the
    /// host's procfs; for a VM, whose guest pids mean nothing on the host, whether `ctr task
    /// ps` still lists it.
    pub fn task_pid_alive(&self, id: &str, pid: u32) -> bool {
        if !self.variant.is_vm() {
            return procfs::alive(pid);
        }
        let out = self.ctr(&["task", "ps", id]);
        out.ok()
            && out
                .stdout_str()
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(pid.to_string().as_str()))
    }

    /// The argv of the init of task `id`, which `ctr task ls` shows as `pid`. For a VM: `ctr
    /// task ps` must list `pid`, and the argv is that of the container's pid 1, read inside
    /// (a guest pid can be looked up neither on the host nor in the container's pid
    /// namespace).
    #[track_caller]
    pub fn init_argv(&self, id: &str, pid: u32) -> Vec<String> {
        if !self.variant.is_vm() {
            return procfs::cmdline(pid);
        }
        let listed = self.task_pids(id);
        self.ensure(listed.contains(&pid), || {
            format!("ctr task ps {id} lists {listed:?}, not the init {pid} ctr task ls shows")
        });
        self.sh_in(id, "tr '\\0' '\\n' < /proc/1/cmdline")
            .lines()
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The cgroup paths of container `id`'s init, as its /proc/1/cgroup shows them from
    /// inside (for a VM: the guest's cgroup).
    #[track_caller]
    pub fn cgroups_inside(&self, id: &str) -> Vec<String> {
        self.sh_in(id, "cat /proc/1/cgroup")
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .map(str::to_string)
            .collect()
    }

    /// The kernel boot id container `id` sees (one per booted kernel: a VM's guest has its own).
    #[track_caller]
    pub fn boot_id(&self, id: &str) -> String {
        self.sh_in(id, "cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_string()
    }

    /// The QEMU processes shim `shim` started (its children).
    pub fn qemu_children(&self, shim: u32) -> Vec<u32> {
        procfs::children(shim)
            .into_iter()
            .filter(|p| procfs::is_qemu(*p))
            .collect()
    }

    /// The VM running container `id`: the one QEMU child of the shim serving it.
    #[track_caller]
    pub fn vm_pid(&self, id: &str) -> u32 {
        let shim = self.shim_pid(id);
        let vms = self.qemu_children(shim);
        match vms.as_slice() {
            [one] => *one,
            _ => self.fail(format!(
                "expected one QEMU child of the shim {shim} serving {id}, found {vms:?} \
                 (children: {:?})",
                procfs::children(shim)
                    .into_iter()
                    .map(|p| (p, procfs::cmdline(p)))
                    .collect::<Vec<_>>()
            )),
        }
    }

    // ---------------------------------------------------------- host view --

    /// The bundle directory of container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.daemon.bundle(&self.ns, id)
    }

    /// The socket path of the shim serving `id` (`address`, else 2.x's
    /// `bootstrap.json`), if the bundle says.
    pub fn shim_address(&self, id: &str) -> Option<String> {
        self.daemon.shim_address(&self.ns, id)
    }

    /// The shim process serving container `id` (argv has `-id ID` and
    /// `-namespace NS`); fails unless exactly one exists.
    #[track_caller]
    pub fn shim_pid(&self, id: &str) -> u32 {
        let pids = procfs::shim_pids(&self.ns, id);
        match pids.as_slice() {
            [one] => *one,
            _ => self.fail(format!(
                "expected exactly one shim process for {id}, found {pids:?}"
            )),
        }
    }

    /// Cgroup path (relative) `ctr run` gives container `id`: `/<ns>/<id>`.
    pub fn cgroup_rel(&self, id: &str) -> String {
        format!("/{}/{}", self.ns, id)
    }

    /// Diagnostics for a failed test: what containerd logged meanwhile
    /// (other tests running in parallel may contribute lines).
    pub fn diagnostics(&self) -> String {
        self.daemon.log_tail(80, Some(self.log_start))
    }

    /// Remove every task and container of the namespace (best effort).
    pub fn cleanup(&self) {
        let short = Duration::from_secs(20);
        let list = |what: &str| -> Vec<String> {
            let out = self.ctr_timeout(short, &[what, "ls", "-q"]);
            out.stdout_str()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        };
        let tasks = list("task");
        for t in &tasks {
            let _ = self.ctr_timeout(short, &["task", "kill", "-a", "-s", "SIGKILL", t]);
        }
        for t in &tasks {
            let _ = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
                self.task(t)
                    .filter(|i| i.status != "RUNNING" && i.status != "PAUSED")
            });
            let out = self.ctr_timeout(short, &["task", "delete", "-f", t]);
            if !out.ok() {
                eprintln!("cleanup: task delete -f {t} failed:\n{}", out.describe());
            }
        }
        for c in list("container") {
            let _ = self.ctr_timeout(short, &["container", "rm", &c]);
        }
        // The per-namespace cgroup parents (empty by now) and runtime state dir.
        for cg in procfs::cgroup_dirs(&self.ns) {
            let _ = std::fs::remove_dir(cg);
        }
        let _ = std::fs::remove_dir(std::path::Path::new("/run/containerd/runc").join(&self.ns));
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.cleanup();
    }
}

// ----------------------------------------------------------------- heavy --

/// A process-wide semaphore for heavy scenarios (many containers, big
/// outputs): at most `HEAVY_SLOTS` run at once, whatever `--test-threads` is.
const HEAVY_SLOTS: usize = 1;
static HEAVY: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Held while a heavy scenario runs.
pub struct HeavyGuard(());

/// Take a heavy slot (blocks until one is free).
pub fn heavy() -> HeavyGuard {
    let (m, cv) = &HEAVY;
    let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= HEAVY_SLOTS {
        n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    HeavyGuard(())
}

impl Drop for HeavyGuard {
    fn drop(&mut self) {
        let (m, cv) = &HEAVY;
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        cv.notify_one();
    }
}

/// Every scenario runs through this: skip unselected variants, set up the
/// context, and on failure print containerd's log for the namespace.
pub fn run_scenario(name: &str, variant: Variant, f: fn(&Ctx)) {
    if !variant.selected() {
        eprintln!(
            "SKIP {name} / {}: not selected by E2E_RUNTIMES",
            variant.name()
        );
        return;
    }
    let ctx = Ctx::new(name, variant);
    let started = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ctx)));
    match r {
        Ok(()) => eprintln!(
            "[{name} / {}] passed in {:.1?}",
            variant.name(),
            started.elapsed()
        ),
        Err(e) => {
            eprintln!(
                "[{name} / {}] FAILED after {:.1?}; diagnostics:\n{}",
                variant.name(),
                started.elapsed(),
                ctx.diagnostics()
            );
            drop(ctx);
            std::panic::resume_unwind(e);
        }
    }
}

/// Like [`run_scenario`], but alone: holds a process-wide lock for the whole
/// scenario (context setup and cleanup included), so scenarios that stop or
/// restart the test binary's containerd never overlap another one declared
/// with [`exclusive_scenarios!`]. Put such scenarios in a test binary of their
/// own (every test of a binary shares its daemon).
pub fn run_scenario_exclusive(name: &str, variant: Variant, f: fn(&Ctx)) {
    static EXCLUSIVE: Mutex<()> = Mutex::new(());
    let _alone = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    run_scenario(name, variant, f)
}

/// [`scenarios!`] whose tests run one at a time ([`run_scenario_exclusive`]).
#[macro_export]
macro_rules! exclusive_scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn runc_v2_reference() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::RuncV2Reference, super::$name)
                }
                #[test]
                fn oci_runc_name() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::OciRuncName, super::$name)
                }
                #[test]
                fn oci_runc_path() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::OciRuncPath, super::$name)
                }
                #[test]
                fn oci_crun_name() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::OciCrunName, super::$name)
                }
                #[test]
                fn oci_crun_path() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::OciCrunPath, super::$name)
                }
                #[test]
                fn process_name() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::ProcessName, super::$name)
                }
                #[test]
                fn process_path() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::ProcessPath, super::$name)
                }
                #[test]
                fn vm_name() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::VmName, super::$name)
                }
                #[test]
                fn vm_path() {
                    $crate::ctx::run_scenario_exclusive(stringify!($name), $crate::Variant::VmPath, super::$name)
                }
            }
        )*
    };
}

/// Declare scenarios: one `#[test]` per scenario and variant, named
/// `<scenario>::<variant>` (e.g. `stdout_exact::oci_crun_name`). Each listed
/// name must be a `fn(&Ctx)` in the same module.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn runc_v2_reference() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::RuncV2Reference, super::$name)
                }
                #[test]
                fn oci_runc_name() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::OciRuncName, super::$name)
                }
                #[test]
                fn oci_runc_path() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::OciRuncPath, super::$name)
                }
                #[test]
                fn oci_crun_name() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::OciCrunName, super::$name)
                }
                #[test]
                fn oci_crun_path() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::OciCrunPath, super::$name)
                }
                #[test]
                fn process_name() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::ProcessName, super::$name)
                }
                #[test]
                fn process_path() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::ProcessPath, super::$name)
                }
                #[test]
                fn vm_name() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::VmName, super::$name)
                }
                #[test]
                fn vm_path() {
                    $crate::run_scenario(stringify!($name), $crate::Variant::VmPath, super::$name)
                }
            }
        )*
    };
}
