//! Task lifecycle: detached runs, create/start, signals, pause/resume, ps,
//! metrics, delete.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shim_e2e::procfs;
use shim_e2e::util::wait_for;
use shim_e2e::{Ctx, IMAGE};

shim_e2e::scenarios! {
    detached_run,
    create_then_start,
    init_exits_with_children_alive,
    kill_sigterm_trapped,
    kill_sigkill,
    kill_all,
    pause_resume,
    ps_lists_pids,
    metrics_json,
    delete_leaves_nothing,
    delete_running_fails,
    oci_runtime_selected,
}

/// `ctr run -d` returns at once; `ctr task ls` shows the task RUNNING with
/// the pid of the real init process.
fn detached_run(ctx: &Ctx) {
    let started = Instant::now();
    let out = ctx.ctr(&ctx.run_args(&["-d"], IMAGE, "c1", &["sleep", "100000"]));
    ctx.check(&out, "ctr run -d");
    ctx.ensure(started.elapsed() < Duration::from_secs(15), || {
        format!("ctr run -d took {:?}", started.elapsed())
    });
    ctx.ensure(out.stdout.is_empty(), || {
        format!("ctr run -d printed something\n{}", out.describe())
    });
    let t = ctx.wait_status("c1", "RUNNING", Duration::from_secs(10));
    let argv = ctx.init_argv("c1", t.pid);
    ctx.ensure(argv == ["sleep", "100000"], || {
        format!(
            "pid {} from ctr task ls should be the init, its argv is {argv:?}",
            t.pid
        )
    });
    let containers = ctx.ctr_ok(&["container", "ls", "-q"]);
    ctx.ensure(containers.stdout_str().lines().any(|l| l == "c1"), || {
        format!("container c1 not listed\n{}", containers.describe())
    });
    // It stays up.
    std::thread::sleep(Duration::from_millis(500));
    ctx.wait_status("c1", "RUNNING", Duration::from_secs(1));
    ctx.kill_and_remove("c1");
}

/// `ctr c create` then `ctr t start`: the task starts, output and exit code
/// come back through `ctr task start`.
fn create_then_start(ctx: &Ctx) {
    let args = ctx.create_args(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "echo started as $0; echo on-stderr >&2; sleep 0.3; exit 4",
        ],
    );
    let out = ctx.ctr(&args);
    ctx.check(&out, "ctr container create");
    ctx.ensure(ctx.task("c1").is_none(), || {
        "no task should exist before ctr task start".to_string()
    });
    let info = ctx.ctr_ok(&["container", "info", "c1"]);
    let info: Value = serde_json::from_slice(&info.stdout).expect("container info is JSON");
    ctx.ensure(
        info["Runtime"]["Name"].as_str() == Some(ctx.rt.runtime.as_str()),
        || {
            format!(
                "container runtime should be {}, info: {info}",
                ctx.rt.runtime
            )
        },
    );
    let fifo = ctx.daemon.fifo_dir.display().to_string();
    let out = ctx.ctr(&["task", "start", "--fifo-dir", &fifo, "c1"]);
    ctx.check_code(&out, 4, "ctr task start returns the exit code");
    ctx.ensure(
        out.stdout == b"started as sh\n" && out.stderr == b"on-stderr\n",
        || format!("unexpected output\n{}", out.describe()),
    );
    ctx.ensure(ctx.task("c1").is_none(), || {
        "ctr task start (attached) deletes the task when it ends".to_string()
    });
    ctx.ctr_ok(&["container", "rm", "c1"]);
}

/// The init exits while a child it started is still alive: the exit status
/// is reported promptly (the child dies with the pid namespace).
fn init_exits_with_children_alive(ctx: &Ctx) {
    let started = Instant::now();
    let out = ctx.run(
        &[],
        IMAGE,
        "c1",
        &["sh", "-c", "sleep 100 & echo child $!; sleep 0.3; exit 3"],
    );
    ctx.check_code(&out, 3, "init exit code");
    ctx.ensure(started.elapsed() < Duration::from_secs(10), || {
        format!(
            "took {:?}: the exit waited for the child",
            started.elapsed()
        )
    });
    ctx.ensure(out.stdout_str().starts_with("child "), || {
        format!("unexpected output\n{}", out.describe())
    });
    if ctx.variant.is_vm() {
        // The child lived in the guest, which cannot be looked at once the container is
        // gone; what can hold is that the VM went with it (so nothing of the container runs).
        let ours = |p: &u32| {
            procfs::cwd(*p).is_some_and(|d| d.starts_with(ctx.bundle("c1")))
                || procfs::cmdline(*p).iter().any(|a| a.contains(&ctx.ns))
        };
        let vms = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            let v: Vec<u32> = procfs::qemu_pids().into_iter().filter(ours).collect();
            v.is_empty().then_some(())
        });
        ctx.ensure(vms.is_some(), || {
            "the container's VM is still running after ctr run --rm".to_string()
        });
        return;
    }
    // Other tests run `sleep 100` too: only look at this container's cgroup.
    let stray: Vec<u32> = procfs::all_pids()
        .into_iter()
        .filter(|p| procfs::cmdline(*p) == ["sleep", "100"])
        .filter(|p| procfs::in_cgroup(*p, &ctx.cgroup_rel("c1")))
        .collect();
    ctx.ensure(stray.is_empty(), || {
        format!("the container's child survived: {stray:?}")
    });
}

/// `ctr task kill` sends SIGTERM by default; an init that traps it runs its
/// handler and its exit code is reported.
fn kill_sigterm_trapped(ctx: &Ctx) {
    let mut child = ctx.spawn_run(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; sleep 0.3; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    ctx.wait_running_or_exit("c1", &mut child);
    // The trap must be installed before the signal comes: wait for a sleep child.
    let init = ctx.wait_status("c1", "RUNNING", Duration::from_secs(5)).pid;
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        (ctx.container_processes("c1", init).len() > 1).then_some(())
    });
    let k = ctx.kill("c1", "SIGTERM", false, None);
    ctx.check(&k, "ctr task kill (SIGTERM)");
    let out = child.wait();
    ctx.check_code(&out, 7, "the TERM trap's exit code");
    ctx.ensure(out.stdout == b"ready\ngot-term\n", || {
        format!("unexpected output\n{}", out.describe())
    });
}

/// SIGKILL stops a detached task; status STOPPED until deleted, then gone.
fn kill_sigkill(ctx: &Ctx) {
    let t = ctx.run_sleeper("c1");
    let k = ctx.kill("c1", "SIGKILL", false, None);
    ctx.check(&k, "kill -s SIGKILL");
    ctx.wait_status("c1", "STOPPED", Duration::from_secs(10));
    ctx.ensure(!ctx.task_pid_alive("c1", t.pid), || {
        format!("init {} still alive", t.pid)
    });
    let out = ctx.ctr(&["task", "delete", "c1"]);
    ctx.check(&out, "task delete");
    ctx.ensure(out.stderr_str().contains("exit code 137"), || {
        format!(
            "ctr task delete should warn about exit code 137\n{}",
            out.describe()
        )
    });
    ctx.ensure(ctx.task("c1").is_none(), || "task still listed".to_string());
    ctx.ctr_ok(&["container", "rm", "c1"]);
}

/// `--all` signals every process of the container, not only the init.
fn kill_all(ctx: &Ctx) {
    let t = ctx.run_detached(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "trap 'echo term' TERM; sleep 1000 & sleep 1001 & while :; do sleep 0.2; done",
        ],
    );
    let sleepers = || -> (Vec<u32>, Vec<u32>) {
        let procs = ctx.container_processes("c1", t.pid);
        let with = |arg: &str| -> Vec<u32> {
            procs
                .iter()
                .filter(|p| p.argv == ["sleep", arg])
                .map(|p| p.pid)
                .collect()
        };
        (with("1000"), with("1001"))
    };
    let before = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        let (a, b) = sleepers();
        (a.len() == 1 && b.len() == 1).then(|| (a[0], b[0]))
    })
    .unwrap_or_else(|| ctx.fail("the two background sleeps did not start"));
    let k = ctx.kill("c1", "SIGTERM", true, None);
    ctx.check(&k, "kill --all -s SIGTERM");
    let gone = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        let alive = |p| ctx.container_pid_alive("c1", t.pid, p);
        (!alive(before.0) && !alive(before.1)).then_some(())
    });
    ctx.ensure(gone.is_some(), || {
        format!("kill --all SIGTERM must reach the non-init processes {before:?}")
    });
    // The init traps TERM, so it survives.
    std::thread::sleep(Duration::from_millis(300));
    ctx.wait_status("c1", "RUNNING", Duration::from_secs(1));
    ctx.ensure(ctx.task_pid_alive("c1", t.pid), || {
        "the init must survive its trapped TERM".into()
    });
    let k = ctx.kill("c1", "SIGKILL", true, None);
    ctx.check(&k, "kill --all -s SIGKILL");
    ctx.wait_status("c1", "STOPPED", Duration::from_secs(10));
    ctx.ctr_ok(&["task", "delete", "c1"]);
    ctx.ctr_ok(&["container", "rm", "c1"]);
}

fn freezer_state(ctx: &Ctx, id: &str) -> Option<String> {
    let p = Path::new("/sys/fs/cgroup/freezer")
        .join(ctx.cgroup_rel(id).trim_start_matches('/'))
        .join("freezer.state");
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Pause freezes the cgroup (PAUSED), resume thaws it (RUNNING) and the
/// container works again.
fn pause_resume(ctx: &Ctx) {
    let t = ctx.run_detached(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "while :; do read -r up _ < /proc/uptime; echo $up >> /tmp/ticks; sleep 0.05; done",
        ],
    );
    if ctx.variant.is_vm() {
        return pause_resume_in_vm(ctx);
    }
    ctx.ctr_ok(&["task", "pause", "c1"]);
    ctx.wait_status("c1", "PAUSED", Duration::from_secs(5));
    if Path::new("/sys/fs/cgroup/freezer").is_dir() {
        let st = freezer_state(ctx, "c1");
        ctx.ensure(st.as_deref() == Some("FROZEN"), || {
            format!("freezer.state of {} is {st:?}", ctx.cgroup_rel("c1"))
        });
    }
    // Frozen processes do not run: the init's CPU time does not move.
    let cpu = |pid: u32| -> Option<String> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(format!("{}+{}", f.get(11)?, f.get(12)?))
    };
    let c0 = cpu(t.pid);
    std::thread::sleep(Duration::from_millis(400));
    ctx.ensure(cpu(t.pid) == c0, || "the paused init kept running".into());
    ctx.ctr_ok(&["task", "resume", "c1"]);
    ctx.wait_status("c1", "RUNNING", Duration::from_secs(5));
    if Path::new("/sys/fs/cgroup/freezer").is_dir() {
        let st = freezer_state(ctx, "c1");
        ctx.ensure(st.as_deref() == Some("THAWED"), || {
            format!("freezer.state after resume is {st:?}")
        });
    }
    let out = ctx.exec("c1", "e1", &[], &["sh", "-c", "echo alive; sleep 0.3"]);
    ctx.check(&out, "exec after resume");
    ctx.ensure(out.stdout == b"alive\n", || out.describe());
    ctx.kill_and_remove("c1");
}

/// [`pause_resume`] in a VM: the frozen cgroup and the init's CPU time are the guest's,
/// invisible from the host, and nothing can be exec'd into a frozen container to look. What
/// the container records shows it instead: its tick loop (every 50 ms) has a gap as long as
/// the pause.
fn pause_resume_in_vm(ctx: &Ctx) {
    let pause = Duration::from_millis(1500);
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (ticks(ctx).len() >= 3).then_some(())
    })
    .unwrap_or_else(|| ctx.fail("the tick loop did not start"));
    ctx.ctr_ok(&["task", "pause", "c1"]);
    ctx.wait_status("c1", "PAUSED", Duration::from_secs(5));
    std::thread::sleep(pause);
    ctx.wait_status("c1", "PAUSED", Duration::from_secs(1));
    ctx.ctr_ok(&["task", "resume", "c1"]);
    ctx.wait_status("c1", "RUNNING", Duration::from_secs(5));
    // A few ticks after the resume.
    std::thread::sleep(Duration::from_millis(500));
    let ticks = ticks(ctx);
    let gap = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    let frozen = 1.2;
    ctx.ensure(gap >= frozen, || {
        format!(
            "paused for {pause:?}, but the container's ticks show no gap of at least {frozen} s \
             (largest {gap:.2} s over {} ticks): it kept running",
            ticks.len()
        )
    });
    let out = ctx.exec("c1", "e1", &[], &["sh", "-c", "echo alive; sleep 0.3"]);
    ctx.check(&out, "exec after resume");
    ctx.ensure(out.stdout == b"alive\n", || out.describe());
    ctx.kill_and_remove("c1");
}

/// The guest's uptimes (s) at which the container's tick loop ran.
fn ticks(ctx: &Ctx) -> Vec<f64> {
    ctx.sh_in("c1", "cat /tmp/ticks 2>/dev/null || true")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `ctr task ps` lists exactly the container's processes (host pids).
fn ps_lists_pids(ctx: &Ctx) {
    let t = ctx.run_detached(
        &[],
        IMAGE,
        "c1",
        &["sh", "-c", "sleep 1000 & sleep 1001 & wait"],
    );
    if ctx.variant.is_vm() {
        // Guest pids: the host cannot see them, and the container's own pid namespace numbers
        // them differently. ctr task ps must list as many as the container sees, the init
        // among them.
        let inside = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            let p = ctx.container_processes("c1", t.pid);
            (p.len() == 3).then_some(p)
        })
        .unwrap_or_else(|| {
            ctx.fail(format!(
                "expected init + 2 sleeps, the container sees {:?}",
                ctx.container_processes("c1", t.pid)
            ))
        });
        let listed = ctx.task_pids("c1");
        let distinct: BTreeSet<u32> = listed.iter().copied().collect();
        ctx.ensure(
            listed.len() == inside.len() && distinct.len() == listed.len(),
            || format!("ctr task ps lists {listed:?}, the container sees {inside:?}"),
        );
        ctx.ensure(listed.contains(&t.pid), || {
            format!("ctr task ps lists {listed:?}, without the init {}", t.pid)
        });
        ctx.kill_and_remove("c1");
        return;
    }
    let host = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        let d = procfs::descendants(t.pid);
        (d.len() == 3).then_some(d)
    })
    .unwrap_or_else(|| {
        ctx.fail(format!(
            "expected init + 2 sleeps, host sees {:?}",
            procfs::descendants(t.pid)
        ))
    });
    let host: BTreeSet<u32> = host.into_iter().collect();
    let listed: BTreeSet<u32> = ctx.task_pids("c1").into_iter().collect();
    ctx.ensure(listed == host, || {
        format!("ctr task ps lists {listed:?}, the container's processes are {host:?}")
    });
    ctx.kill_and_remove("c1");
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// `ctr task metrics --format json` answers with memory, cpu and pids data.
fn metrics_json(ctx: &Ctx) {
    ctx.run_detached(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 1000 & wait",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = ctx.ctr_ok(&["task", "metrics", "--format", "json", "c1"]);
    let m: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| ctx.fail(format!("metrics are not JSON ({e})\n{}", out.describe())));
    if m["memory"]["usage"].is_object() {
        // cgroup v1 metrics (this host's layout).
        ctx.ensure(num(&m, &["memory", "usage", "usage"]) > 0, || {
            format!("memory.usage.usage missing or 0: {m}")
        });
        ctx.ensure(num(&m, &["memory", "usage", "limit"]) > 0, || {
            format!("memory.usage.limit missing or 0: {m}")
        });
        ctx.ensure(num(&m, &["cpu", "usage", "total"]) > 0, || {
            format!("cpu.usage.total missing or 0: {m}")
        });
        ctx.ensure(
            m["cpu"]["usage"]["per_cpu"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            || format!("cpu.usage.per_cpu missing: {m}"),
        );
    } else {
        // cgroup v2 metrics.
        ctx.ensure(num(&m, &["memory", "usage"]) > 0, || {
            format!("memory.usage missing or 0: {m}")
        });
        ctx.ensure(num(&m, &["cpu", "usage_usec"]) > 0, || {
            format!("cpu.usage_usec missing or 0: {m}")
        });
    }
    ctx.ensure(num(&m, &["pids", "current"]) >= 2, || {
        format!("pids.current should count init + sleep: {m}")
    });
    ctx.kill_and_remove("c1");
}

/// After kill + delete nothing is left: no shim process, no mount, no socket,
/// no runtime state, no cgroup, no bundle.
fn delete_leaves_nothing(ctx: &Ctx) {
    let id = "c1";
    let sockets_before = state_sockets(ctx);
    let t = ctx.run_sleeper(id);
    let shim = ctx.shim_pid(id);
    let bundle = ctx.bundle(id);
    let rootfs = bundle.join("rootfs");
    let socket = ctx.shim_address(id);
    ctx.ensure(socket.is_some(), || {
        format!(
            "the bundle's address (or 2.x bootstrap.json) should hold unix://..., bundle has {:?}",
            std::fs::read_dir(&bundle)
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                .unwrap_or_default()
        )
    });
    let socket = socket.expect("checked above");
    ctx.ensure(Path::new(&socket).exists(), || {
        format!("the shim socket {socket} should exist while running")
    });
    ctx.ensure(!procfs::mounts_under(&rootfs).is_empty(), || {
        format!(
            "the rootfs should be mounted on {} while running",
            rootfs.display()
        )
    });
    // In a VM the container's cgroup is the guest's: seen from inside. Its QEMU must go with
    // the delete.
    let vm = ctx.variant.is_vm().then(|| ctx.vm_pid(id));
    if ctx.variant.is_vm() {
        let inside = ctx.cgroups_inside(id);
        ctx.ensure(inside.contains(&ctx.cgroup_rel(id)), || {
            format!(
                "the container should be in the guest's cgroup {}, its /proc/1/cgroup says {inside:?}",
                ctx.cgroup_rel(id)
            )
        });
    } else {
        let cgroups = procfs::cgroup_dirs(&ctx.cgroup_rel(id));
        ctx.ensure(
            cgroups
                .iter()
                .any(|c| c.starts_with("/sys/fs/cgroup/memory")),
            || {
                format!(
                    "expected the memory cgroup {} while running, found {cgroups:?}",
                    ctx.cgroup_rel(id)
                )
            },
        );
    }

    ctx.kill_and_remove(id);

    let gone = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (!procfs::alive(shim) && procfs::shim_pids(&ctx.ns, id).is_empty()).then_some(())
    });
    ctx.ensure(gone.is_some(), || {
        format!(
            "shim process {shim} (argv {:?}) still alive after delete",
            procfs::cmdline(shim)
        )
    });
    if let Some(vm) = vm {
        // The init's pid is the guest's: its VM going is what shows it is gone.
        ctx.ensure(!procfs::alive(vm), || {
            format!("the container's QEMU {vm} still runs after delete")
        });
    } else {
        ctx.ensure(!procfs::alive(t.pid), || {
            format!("init {} still alive", t.pid)
        });
    }
    let mounts = procfs::mounts_under(&bundle);
    ctx.ensure(mounts.is_empty(), || {
        format!("mounts left under the bundle: {mounts:?}")
    });
    let mounts: Vec<_> = procfs::mounts()
        .into_iter()
        .filter(|m| m.mount_point.contains(&format!("/{}/{id}", ctx.ns)))
        .collect();
    ctx.ensure(mounts.is_empty(), || {
        format!("mounts left for the container: {mounts:?}")
    });
    ctx.ensure(!Path::new(&socket).exists(), || {
        format!("shim socket {socket} left behind")
    });
    let sockets: Vec<_> = state_sockets(ctx)
        .into_iter()
        .filter(|s| !sockets_before.contains(s))
        .collect();
    ctx.ensure(sockets.is_empty(), || {
        format!("sockets left under containerd's state dir: {sockets:?}")
    });
    ctx.ensure(!bundle.exists(), || {
        format!("bundle {} left behind", bundle.display())
    });
    let runc_state = Path::new("/run/containerd/runc").join(&ctx.ns).join(id);
    ctx.ensure(!runc_state.exists(), || {
        format!("runtime state {} left behind", runc_state.display())
    });
    let cgroups = procfs::cgroup_dirs(&ctx.cgroup_rel(id));
    ctx.ensure(cgroups.is_empty(), || {
        format!("cgroups left behind: {cgroups:?}")
    });
    let snapshots = ctx.ctr_ok(&["snapshots", "ls"]);
    ctx.ensure(
        !snapshots
            .stdout_str()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id)),
        || format!("snapshot {id} left behind\n{}", snapshots.describe()),
    );
}

/// Sockets under containerd's state dir, except in other tests' bundles
/// (tests run in parallel, each in its own namespace).
fn state_sockets(ctx: &Ctx) -> Vec<std::path::PathBuf> {
    let tasks = ctx.daemon.state.join("io.containerd.runtime.v2.task");
    let ours = tasks.join(&ctx.ns);
    procfs::sockets_under(&ctx.daemon.state)
        .into_iter()
        .filter(|s| !s.starts_with(&tasks) || s.starts_with(&ours))
        .collect()
}

/// `ctr task delete` of a running task fails and the task keeps running.
fn delete_running_fails(ctx: &Ctx) {
    let t = ctx.run_sleeper("c1");
    let out = ctx.ctr(&["task", "delete", "c1"]);
    ctx.ensure(!out.ok(), || {
        format!("deleting a running task must fail\n{}", out.describe())
    });
    ctx.ensure(out.stderr_str().contains("must be stopped"), || {
        format!("expected a 'must be stopped' error\n{}", out.describe())
    });
    let now = ctx.wait_status("c1", "RUNNING", Duration::from_secs(2));
    ctx.ensure(now.pid == t.pid && ctx.task_pid_alive("c1", t.pid), || {
        format!("the task must keep running with pid {}: {now:?}", t.pid)
    });
    let out = ctx.exec("c1", "e1", &[], &["sh", "-c", "echo still-here; sleep 0.3"]);
    ctx.check(&out, "exec after the failed delete");
    ctx.ensure(out.stdout == b"still-here\n", || out.describe());
    ctx.kill_and_remove("c1");
}

/// The shim runs the OCI runtime the variant selects (runc by default, crun
/// through `--runtime-config-path`). The harness puts logging `runc` and
/// `crun` wrappers first on containerd's PATH, which the shims inherit, so a
/// shim that resolves the configured binary name through PATH shows up there.
fn oci_runtime_selected(ctx: &Ctx) {
    let out = ctx.run(&[], IMAGE, "c1", &["sh", "-c", "echo hi; sleep 0.3"]);
    ctx.check(&out, "run");
    ctx.ensure(out.stdout == b"hi\n", || out.describe());
    let log = std::fs::read_to_string(ctx.daemon.oci_calls_log()).unwrap_or_default();
    // The namespace is unique to this test and appears in the runtime's
    // --root or --bundle arguments.
    let calls: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(ctx.ns.as_str()))
        .collect();
    let Some(want) = ctx.variant.oci_runtime() else {
        // The process shim is the runtime, and the VM shim's runtime is its guest agent: no
        // runtime binary may run on the host at all.
        ctx.ensure(calls.is_empty(), || {
            format!(
                "{} ran a runtime binary on the host: {calls:#?}",
                ctx.variant.name()
            )
        });
        return;
    };
    ctx.ensure(
        calls
            .iter()
            .any(|c| c.split_whitespace().any(|a| a == "create" || a == "run")),
        || {
            format!(
                "no `{want} create` recorded for namespace {}; the shim should run the \
                 configured binary name through PATH, where the harness's wrappers are. \
                 Calls recorded for this namespace: {calls:#?}",
                ctx.ns
            )
        },
    );
    let wrong: Vec<&&str> = calls
        .iter()
        .filter(|c| c.split_whitespace().next() != Some(want))
        .collect();
    ctx.ensure(wrong.is_empty(), || {
        format!("expected only {want} calls, found: {wrong:#?}")
    });
}
