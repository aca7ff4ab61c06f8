//! containerd restarts while containers run. This binary owns its containerd
//! (stopped and started again here), so its scenarios run one at a time.

use std::time::Duration;

use shim_e2e::procfs;
use shim_e2e::util::{wait_for, RemoveOnDrop};
use shim_e2e::{ContainerdVersion, Ctx, PrivateContainerd, IMAGE};

shim_e2e::exclusive_scenarios! {
    containerd_restart,
}

/// Starts containerd again if a scenario stopped it and failed before
/// restarting it, so the next scenario finds a daemon.
struct Revive<'a>(&'a PrivateContainerd);

impl Drop for Revive<'_> {
    fn drop(&mut self) {
        if !self.0.is_running() {
            if let Err(e) = self.0.restart() {
                eprintln!("restarting containerd after a failed scenario: {e}");
            }
        }
    }
}

/// Two detached containers; containerd is stopped (SIGTERM), one container's
/// init is SIGKILLed while it is down, containerd starts again on the same
/// config, root and state, and reconnects to both shims (through the
/// bundles' `address` / `bootstrap.json`). The live one is still RUNNING
/// with the same pid and fully usable (exec, kill, delete).
///
/// The killed one depends on the containerd version:
/// * 1.6 lists it STOPPED, and `ctr task delete` reports exit code 137;
/// * 1.7 and 2.x ask each reconnected shim for its `Pids`, and delete the
///   task of a shim that has none as a "leaked shim" (containerd#6860, PR
///   #6866: meant for a crash during Create, but a dead init qualifies):
///   c1 is no longer listed, containerd logs `cleaning leaked shim process`
///   for it, and its shim exits. The reference Go shim shows exactly this.
///
/// Both shims exit once their task is gone.
///
/// In a VM the host cannot signal the init (a guest process, its pid the
/// guest's) and no exec runs while containerd is down: c1's init ends itself
/// with the same status, 137, when the host drops a file into its rootfs
/// (which the guest sees over the VM's share).
fn containerd_restart(ctx: &Ctx) {
    let d = ctx.daemon;
    let vm = ctx.variant.is_vm();
    let a = if vm {
        ctx.run_detached(
            &[],
            IMAGE,
            "c1",
            &[
                "sh",
                "-c",
                "until [ -e /tmp/die ]; do sleep 0.1; done; touch /tmp/dead; exit 137",
            ],
        )
    } else {
        ctx.run_sleeper("c1")
    };
    let b = ctx.run_sleeper("c2");
    let shim_a = ctx.shim_pid("c1");
    let shim_b = ctx.shim_pid("c2");
    let vms = if vm {
        vec![ctx.vm_pid("c1"), ctx.vm_pid("c2")]
    } else {
        Vec::new()
    };

    // Go shims may leave sockets in /run/containerd/s (2.1's when containerd
    // deletes a leaked shim): removed at the end.
    let _sockets = RemoveOnDrop(if ctx.variant.is_ours() {
        Vec::new()
    } else {
        ["c1", "c2"]
            .iter()
            .flat_map(|id| [false, true].map(|debug| d.go_shim_socket(&ctx.ns, id, debug)))
            .collect()
    });
    let revive = Revive(d);
    let old_pid = d.pid();
    if let Err(e) = d.stop() {
        ctx.fail(format!("stopping containerd: {e}"));
    }
    ctx.ensure(old_pid.is_some_and(|p| !procfs::alive(p)), || {
        format!("containerd {old_pid:?} still alive after stop")
    });
    // The shims and containers (for a VM: their VMs) outlive containerd.
    let mut survivors = vec![("shim of c1", shim_a), ("shim of c2", shim_b)];
    if vm {
        survivors.extend([("VM of c1", vms[0]), ("VM of c2", vms[1])]);
    } else {
        survivors.extend([("init of c1", a.pid), ("init of c2", b.pid)]);
    }
    for (what, pid) in survivors {
        ctx.ensure(procfs::alive(pid), || {
            format!("{what} (pid {pid}) died with containerd")
        });
    }
    if vm {
        let rootfs_tmp = ctx.bundle("c1").join("rootfs/tmp");
        if let Err(e) = std::fs::write(rootfs_tmp.join("die"), b"") {
            ctx.fail(format!("writing {}/die: {e}", rootfs_tmp.display()));
        }
        let gone = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            rootfs_tmp.join("dead").exists().then_some(())
        });
        ctx.ensure(gone.is_some(), || {
            format!(
                "init of c1 did not reach its exit after {}/die appeared",
                rootfs_tmp.display()
            )
        });
    } else {
        unsafe {
            libc::kill(a.pid as i32, libc::SIGKILL);
        }
        let gone = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            (!procfs::alive(a.pid)).then_some(())
        });
        ctx.ensure(gone.is_some(), || {
            format!("init of c1 (pid {}) survived SIGKILL", a.pid)
        });
    }
    // Let the shim notice the exit while nobody listens to its events.
    std::thread::sleep(Duration::from_millis(500));
    let log_from = d.log_offset();
    if let Err(e) = d.restart() {
        ctx.fail(format!("restarting containerd: {e}"));
    }
    drop(revive);

    let reaps_dead = ctx.containerd_version() != ContainerdVersion::V1_6;
    let want_c1 = if reaps_dead { None } else { Some("STOPPED") };
    let mut last = Vec::new();
    let seen = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        last = ctx.tasks();
        let s = |id: &str| last.iter().find(|t| t.id == id).map(|t| t.status.clone());
        (s("c1").as_deref() == want_c1 && s("c2").as_deref() == Some("RUNNING")).then_some(())
    });
    ctx.ensure(seen.is_some(), || {
        format!(
            "after the restart of containerd {}, expected c1 {} and c2 RUNNING; ctr task ls: {last:?}",
            ctx.containerd_version().name(),
            want_c1.unwrap_or("not listed")
        )
    });
    let c2 = last
        .iter()
        .find(|t| t.id == "c2")
        .expect("c2 is listed, checked above");
    ctx.ensure(c2.pid == b.pid, || {
        format!("c2's pid changed over the restart: {} → {}", b.pid, c2.pid)
    });

    // The live container works as before.
    let out = ctx.exec("c2", "e1", &[], &["sh", "-c", "echo alive; sleep 0.3"]);
    ctx.check(&out, "exec in c2 after the restart");
    ctx.ensure(out.stdout == b"alive\n", || {
        format!("exec output after the restart\n{}", out.describe())
    });

    if reaps_dead {
        let log = d.log_since(log_from);
        let needle = format!("id=c1 namespace={}", ctx.ns);
        ctx.ensure(
            log.lines()
                .any(|l| l.contains("cleaning leaked shim process") && l.contains(&needle)),
            || {
                format!(
                    "containerd {} should have cleaned up c1's shim (its task has no \
                     process left) with `cleaning leaked shim process`\n{}",
                    ctx.containerd_version().name(),
                    d.log_tail(60, Some(log_from))
                )
            },
        );
    } else {
        // The killed one reports 137.
        let out = ctx.ctr(&["task", "delete", "c1"]);
        ctx.check(&out, "task delete c1");
        ctx.ensure(out.stderr_str().contains("exit code 137"), || {
            format!(
                "ctr task delete c1 should report exit code 137 (its init was SIGKILLed while \
                 containerd was down)\n{}",
                out.describe()
            )
        });
    }
    ctx.ctr_ok(&["container", "rm", "c1"]);
    ctx.kill_and_remove("c2");

    for (id, shim) in [("c1", shim_a), ("c2", shim_b)] {
        let exited = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            (!procfs::alive(shim)).then_some(())
        });
        ctx.ensure(exited.is_some(), || {
            format!(
                "the shim of {id} (pid {shim}, argv {:?}) still runs after its task was deleted",
                procfs::cmdline(shim)
            )
        });
    }
    for (id, vm) in ["c1", "c2"].into_iter().zip(vms) {
        ctx.ensure(!procfs::alive(vm), || {
            format!("the VM of {id} (QEMU {vm}) still runs after its task was deleted")
        });
    }
    for id in ["c1", "c2"] {
        let bundle = ctx.bundle(id);
        let gone = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            (!bundle.exists()).then_some(())
        });
        ctx.ensure(gone.is_some(), || {
            format!("{id}'s bundle {} is left behind", bundle.display())
        });
    }
}
