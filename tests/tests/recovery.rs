//! A shim that dies: containerd cleans up after it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shim_e2e::procfs;
use shim_e2e::util::{wait_for, RemoveOnDrop};
use shim_e2e::Ctx;

shim_e2e::scenarios! {
    shim_killed,
}

/// `run -d`, then SIGKILL the shim. containerd notices, runs `shim delete`
/// and drops the task within seconds: no container process remains, nothing
/// is mounted under the bundle, the shim's socket, the container's cgroup
/// and the runtime's state are gone.
fn shim_killed(ctx: &Ctx) {
    let id = "c1";
    let t = ctx.run_sleeper(id);
    let shim = ctx.shim_pid(id);
    let bundle = ctx.bundle(id);
    if let Ok(text) = std::fs::read_to_string(bundle.join("shim.pid")) {
        ctx.ensure(text.trim() == shim.to_string(), || {
            format!("the bundle's shim.pid says {text:?}, the shim process is {shim}")
        });
    }
    let socket = ctx.shim_address(id).unwrap_or_else(|| {
        ctx.fail(format!(
            "no shim address in {} (address or bootstrap.json)",
            bundle.display()
        ))
    });
    // The reference leaves its sockets behind (containerd-facts.md): removed
    // at the end whatever happens (its shim is dead by then).
    let _remove = RemoveOnDrop(if ctx.variant.is_ours() {
        Vec::new()
    } else {
        vec![
            PathBuf::from(&socket),
            ctx.daemon.go_shim_socket(&ctx.ns, id, true),
        ]
    });
    ctx.ensure(Path::new(&socket).exists(), || {
        format!("the shim socket {socket} should exist while running")
    });
    ctx.ensure(!procfs::mounts_under(&bundle).is_empty(), || {
        format!("the rootfs should be mounted under {}", bundle.display())
    });
    let memory_cg =
        Path::new("/sys/fs/cgroup/memory").join(ctx.cgroup_rel(id).trim_start_matches('/'));
    // A VM's container is in the guest's cgroup (none on the host), and its init is a guest
    // process: its QEMU is what must not survive.
    let check_cgroup = Path::new("/sys/fs/cgroup/memory").is_dir() && !ctx.variant.is_vm();
    let vm = ctx.variant.is_vm().then(|| ctx.vm_pid(id));
    if ctx.variant.is_vm() {
        let inside = ctx.cgroups_inside(id);
        ctx.ensure(inside.contains(&ctx.cgroup_rel(id)), || {
            format!(
                "the container should be in the guest's cgroup {}, its /proc/1/cgroup says {inside:?}",
                ctx.cgroup_rel(id)
            )
        });
    }
    if check_cgroup {
        ctx.ensure(memory_cg.is_dir(), || {
            format!("{} should exist while running", memory_cg.display())
        });
    }
    // Ours keeps the runtime's state in the bundle; the reference under /run.
    let state = if ctx.variant.is_ours() {
        bundle.clone()
    } else {
        Path::new("/run/containerd/runc").join(&ctx.ns).join(id)
    };
    ctx.ensure(state.exists(), || {
        format!(
            "runtime state {} should exist while running",
            state.display()
        )
    });

    unsafe {
        libc::kill(shim as i32, libc::SIGKILL);
    }
    let mut last = None;
    let noticed = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        last = ctx.task(id);
        match &last {
            None => Some(()),
            Some(t) if t.status == "STOPPED" => Some(()),
            Some(_) => None,
        }
    });
    ctx.ensure(noticed.is_some(), || {
        format!("10 s after the shim was SIGKILLed, ctr task ls still shows {last:?}")
    });

    // containerd's cleanup (`shim delete`, removing the bundle) finishes in
    // the background: give it a few seconds, then report what is left.
    let leftovers = || {
        let mut left = Vec::new();
        if let Some(vm) = vm.filter(|p| procfs::alive(*p)) {
            left.push(format!("the container's VM (QEMU {vm})"));
        } else if vm.is_none() && procfs::alive(t.pid) {
            left.push(format!(
                "the container's init {} ({:?})",
                t.pid,
                procfs::cmdline(t.pid)
            ));
        }
        if procfs::alive(shim) {
            left.push(format!("the shim process {shim}"));
        }
        let mounts = procfs::mounts_under(&bundle);
        if !mounts.is_empty() {
            left.push(format!("mounts under the bundle: {mounts:?}"));
        }
        if ctx.variant.is_ours() && Path::new(&socket).exists() {
            left.push(format!("the shim socket {socket}"));
        }
        if check_cgroup && memory_cg.exists() {
            left.push(format!("the cgroup {}", memory_cg.display()));
        }
        if state.exists() {
            left.push(format!("runtime state {}", state.display()));
        }
        left
    };
    let mut left = Vec::new();
    let clean = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        left = leftovers();
        left.is_empty().then_some(())
    });
    ctx.ensure(clean.is_some(), || {
        format!(
            "10 s after containerd noticed the dead shim, still there: {left:#?}\nctr task ls: {:?}",
            ctx.task(id)
        )
    });
    if !ctx.variant.is_ours() && Path::new(&socket).exists() {
        eprintln!("[shim_killed / reference] left its socket {socket} behind (known; removed)");
    }
    if ctx.task(id).is_some() {
        let out = ctx.ctr(&["task", "delete", id]);
        ctx.check(&out, "task delete after the shim died");
    }
    ctx.ctr_ok(&["container", "rm", id]);
}
