//! What only the VM shim promises (issue 5): the container runs on the guest's kernel, a pod's
//! containers share one VM, and the guest boots without errors. The other variants print SKIP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shim_e2e::procfs;
use shim_e2e::runtime::guest_image_dir;
use shim_e2e::util::wait_for;
use shim_e2e::{Ctx, Variant, IMAGE};

shim_e2e::scenarios! {
    vm_guest_kernel,
    vm_pod_shares_one_vm,
    vm_console_log_clean,
    vm_template_fresh_clock_and_entropy,
}

/// Skip the variants that run no VM; returns true when the scenario applies.
fn vm_only(ctx: &Ctx, scenario: &str) -> bool {
    if ctx.variant.is_vm() {
        return true;
    }
    eprintln!(
        "SKIP {scenario} / {}: a VM shim scenario (the container runs on the host's kernel here)",
        ctx.variant.name()
    );
    false
}

/// The host's kernel release (`uname -r`).
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("reading the host's kernel release")
        .trim()
        .to_string()
}

/// The host's boot id.
fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("reading the host's boot id")
        .trim()
        .to_string()
}

/// `uname -r` in the container differs from the host's: it runs on the guest's kernel, the one
/// the guest image was built with (its `image.toml`, for the variant that names the image).
fn vm_guest_kernel(ctx: &Ctx) {
    if !vm_only(ctx, "vm_guest_kernel") {
        return;
    }
    let out = ctx.run(&[], IMAGE, "c1", &["sh", "-c", "uname -r; sleep 0.3"]);
    ctx.check(&out, "uname -r in the container");
    let guest = out.stdout_str().trim().to_string();
    let host = host_release();
    ctx.ensure(!guest.is_empty() && guest != host, || {
        format!(
            "the container should see the guest's kernel, not the host's {host}; it saw {guest:?}"
        )
    });
    if ctx.variant == Variant::VmPath {
        let meta = guest_image_dir().join("image.toml");
        // `kernel_release = "..."`, one line of the builder's TOML.
        let built = std::fs::read_to_string(&meta).ok().and_then(|t| {
            t.lines().find_map(|l| {
                let v = l.strip_prefix("kernel_release")?.trim_start();
                Some(v.strip_prefix('=')?.trim().trim_matches('"').to_string())
            })
        });
        if let Some(built) = built {
            ctx.ensure(guest == built, || {
                format!(
                    "the container runs kernel {guest}, the guest image ({}) was built with {built}",
                    meta.display()
                )
            });
        }
    }
}

/// Unix sockets under containerd's state directory that belong to this test (other tests'
/// bundles excluded).
fn our_sockets(ctx: &Ctx) -> Vec<PathBuf> {
    let tasks = ctx.daemon.state.join("io.containerd.runtime.v2.task");
    let ours = tasks.join(&ctx.ns);
    procfs::sockets_under(&ctx.daemon.state)
        .into_iter()
        .filter(|s| !s.starts_with(&tasks) || s.starts_with(&ours))
        .collect()
}

/// Two containers of one pod (`io.containerd.runc.v2.group`) run in ONE VM: one shim, one
/// QEMU (the shim's child), the same guest kernel boot (boot id, not the host's). Deleting both
/// leaves no shim, no QEMU, no mount under their bundles and no socket.
fn vm_pod_shares_one_vm(ctx: &Ctx) {
    if !vm_only(ctx, "vm_pod_shares_one_vm") {
        return;
    }
    let sockets_before = our_sockets(ctx);
    let ann = "io.containerd.runc.v2.group=pod1";
    let sleep = ["sleep", "100000"];
    ctx.run_detached(&["--annotation", ann], IMAGE, "c1", &sleep);
    ctx.run_detached(&["--annotation", ann], IMAGE, "c2", &sleep);
    let shim = ctx.shim_pid("c1");
    let others = procfs::shim_pids(&ctx.ns, "c2");
    ctx.ensure(others.is_empty(), || {
        format!("c2 got a shim of its own ({others:?}); the pod's shim is {shim}")
    });
    let vm = ctx.vm_pid("c1");
    let tasks = ctx
        .daemon
        .state
        .join("io.containerd.runtime.v2.task")
        .join(&ctx.ns);
    let mut ns_shims = procfs::shim_pids(&ctx.ns, "c1");
    ns_shims.extend(procfs::shim_pids(&ctx.ns, "c2"));
    let all_vms: Vec<(u32, Option<u32>)> = procfs::qemu_pids()
        .into_iter()
        .filter(|p| {
            // A VM of this namespace: in a bundle of it, or (a pod's VM, which runs beside
            // the pod's socket) a child of one of its shims.
            procfs::cwd(*p).is_some_and(|c| c.starts_with(&tasks))
                || procfs::ppid(*p).is_some_and(|pp| ns_shims.contains(&pp))
                || procfs::cmdline(*p).iter().any(|a| a.contains(&ctx.ns))
        })
        .map(|p| (p, procfs::ppid(p)))
        .collect();
    ctx.ensure(all_vms == [(vm, Some(shim))], || {
        format!("the pod should have one QEMU, child of its shim {shim}; found (pid, parent) {all_vms:?}")
    });
    let (boot1, boot2) = (ctx.boot_id("c1"), ctx.boot_id("c2"));
    ctx.ensure(boot1 == boot2, || {
        format!("c1 and c2 should run on one kernel, their boot ids are {boot1} and {boot2}")
    });
    let host = host_boot_id();
    ctx.ensure(boot1 != host, || {
        format!("the pod should run on the guest's kernel, its boot id is the host's ({host})")
    });
    let bundles = [ctx.bundle("c1"), ctx.bundle("c2")];
    let socket = ctx.shim_address("c1");

    // c2 first: deleting the pod's first container while the second runs is
    // pods.rs's `pod_shares_one_shim`.
    ctx.kill_and_remove("c2");
    ctx.ensure(procfs::alive(vm), || {
        format!("the pod's VM {vm} stopped while c1 still runs")
    });
    ctx.kill_and_remove("c1");

    let gone = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (!procfs::alive(shim) && !procfs::alive(vm)).then_some(())
    });
    ctx.ensure(gone.is_some(), || {
        format!(
            "after deleting both: shim {shim} alive {}, QEMU {vm} alive {}",
            procfs::alive(shim),
            procfs::alive(vm)
        )
    });
    for b in &bundles {
        let mounts = procfs::mounts_under(b);
        ctx.ensure(mounts.is_empty(), || {
            format!("mounts left under {}: {mounts:?}", b.display())
        });
    }
    let ns_mounts: Vec<_> = procfs::mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&tasks.display().to_string()))
        .collect();
    ctx.ensure(ns_mounts.is_empty(), || {
        format!("mounts left under the namespace's bundles: {ns_mounts:?}")
    });
    if let Some(s) = &socket {
        ctx.ensure(!Path::new(s).exists(), || {
            format!("the pod's shim socket {s} is left behind")
        });
        let run_dir = format!("{s}.vm");
        ctx.ensure(!Path::new(&run_dir).exists(), || {
            format!("the pod's VM directory {run_dir} is left behind")
        });
    }
    let left: Vec<_> = our_sockets(ctx)
        .into_iter()
        .filter(|s| !sockets_before.contains(s))
        // Other tests run their own pods meanwhile: only this pod's socket and VM count.
        .filter(|s| {
            socket.as_deref().is_some_and(|own| {
                s.to_string_lossy()
                    .starts_with(own.trim_start_matches("unix://"))
            })
        })
        .collect();
    ctx.ensure(left.is_empty(), || {
        format!("sockets left under containerd's state dir: {left:?}")
    });
}

/// Console lines that look like errors but are not, each with the reason.
const CONSOLE_ALLOWED: &[(&str, &str)] = &[(
    "PCI: Fatal: No config space access function found",
    "QEMU's microvm machine has no PCI bus (its devices are virtio-mmio): the kernel's PCI \
     probe finds none and says so",
)];

/// With `console_log = true` the guest console goes to `<bundle>/vm/console.log` while the VM
/// runs: a guest that booted and ran a container shows no error, panic, fatal message or kernel
/// stack trace, but for the allowed lines ([`CONSOLE_ALLOWED`]).
fn vm_console_log_clean(ctx: &Ctx) {
    if !vm_only(ctx, "vm_console_log_clean") {
        return;
    }
    run_sleeper_with(ctx, "c1", "console_log = true");
    ctx.wait_status("c1", "RUNNING", Duration::from_secs(20));
    // The guest works: an exec runs.
    let hi = ctx.sh_in("c1", "echo hi");
    ctx.ensure(hi == "hi\n", || format!("exec printed {hi:?}"));
    let log_path = ctx.bundle("c1").join("vm/console.log");
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| {
        ctx.fail(format!(
            "no console log at {} with console_log = true: {e}",
            log_path.display()
        ))
    });
    // The kernel boots `quiet`; the agent (PID 1) logs to the console too.
    ctx.ensure(log.contains("vm-agent"), || {
        format!(
            "the console log {} does not show the guest agent:\n{log}",
            log_path.display()
        )
    });
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            ["error", "panic", "call trace", "fatal"]
                .iter()
                .any(|w| low.contains(w))
        })
        .filter(|l| {
            !CONSOLE_ALLOWED
                .iter()
                .any(|(allowed, _)| l.contains(allowed))
        })
        .collect();
    ctx.ensure(bad.is_empty(), || {
        format!(
            "the guest console shows errors:\n{}\n--- whole log ({}) ---\n{log}",
            bad.join("\n"),
            log_path.display()
        )
    });
    ctx.kill_and_remove("c1");
}

/// Two containers in two VMs, restored from the image's VM template when it has one (their
/// QEMU command lines say `-incoming`): each guest's clock is the host's (not the template's,
/// saved when the image was built), and each has random state of its own (the template's is
/// the same for every VM made from it; the host's SyncGuest reseeds it). The VMs are told apart
/// by their QEMU processes, not by boot ids; the boot ids must differ too: the kernel draws its
/// boot id at the first read, which comes after the reseed. With `template = false` the VM
/// boots cold.
fn vm_template_fresh_clock_and_entropy(ctx: &Ctx) {
    if !vm_only(ctx, "vm_template_fresh_clock_and_entropy") {
        return;
    }
    let sleep = ["sleep", "100000"];
    ctx.run_detached(&[], IMAGE, "c1", &sleep);
    ctx.run_detached(&[], IMAGE, "c2", &sleep);
    let (vm1, vm2) = (ctx.vm_pid("c1"), ctx.vm_pid("c2"));
    ctx.ensure(vm1 != vm2, || {
        format!("c1 and c2 should run in two VMs, both run in QEMU {vm1}")
    });
    let template = guest_image_dir().join("template");
    if template.exists() {
        for vm in [vm1, vm2] {
            let args = procfs::cmdline(vm);
            ctx.ensure(args.iter().any(|a| a == "-incoming"), || {
                format!(
                    "the image has a VM template ({}), but QEMU {vm} was not restored from it: {args:?}",
                    template.display()
                )
            });
        }
    } else {
        eprintln!(
            "note: no VM template in {}; checking cold-booted VMs",
            guest_image_dir().display()
        );
    }
    for id in ["c1", "c2"] {
        let guest: i64 = ctx
            .sh_in(id, "date +%s")
            .trim()
            .parse()
            .unwrap_or_else(|e| ctx.fail(format!("date +%s in {id}: {e}")));
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the host clock is after 1970")
            .as_secs() as i64;
        ctx.ensure((guest - host).abs() <= 5, || {
            format!("the guest clock of {id} is {guest}, the host's {host}")
        });
    }
    let random = |id: &str| ctx.sh_in(id, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'");
    let (r1, r2) = (random("c1"), random("c2"));
    ctx.ensure(r1.len() == 64 && r1 != r2, || {
        format!("the two VMs read the same (or no) random bytes: {r1:?} and {r2:?}")
    });
    let (b1, b2) = (ctx.boot_id("c1"), ctx.boot_id("c2"));
    ctx.ensure(b1 != b2, || {
        format!("two VMs from one template share the boot id {b1}")
    });
    ctx.kill_and_remove("c1");
    ctx.kill_and_remove("c2");

    // `template = false` boots cold, template or not.
    run_sleeper_with(ctx, "c3", "template = false");
    ctx.wait_status("c3", "RUNNING", Duration::from_secs(30));
    let args = procfs::cmdline(ctx.vm_pid("c3"));
    ctx.ensure(!args.iter().any(|a| a == "-incoming"), || {
        format!("with template = false the VM was restored anyway: {args:?}")
    });
    ctx.kill_and_remove("c3");
}

/// `ctr run -d` of a sleeper `id` through the VM shim with the test image and one more line
/// of settings (`extra`), in a runtime config file of its own.
fn run_sleeper_with(ctx: &Ctx, id: &str, extra: &str) {
    let config = ctx.work.join(format!("runtime-vm-{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "image = {}\n{extra}\n",
            serde_json::Value::String(guest_image_dir().display().to_string())
        ),
    )
    .expect("writing the runtime config");
    let config = config.display().to_string();
    let fifo = ctx.daemon.fifo_dir.display().to_string();
    let out = ctx.ctr(&[
        "run",
        "--runtime",
        &ctx.rt.runtime,
        "--runtime-config-path",
        &config,
        "--fifo-dir",
        &fifo,
        "-d",
        IMAGE,
        id,
        "sleep",
        "100000",
    ]);
    ctx.check(&out, &format!("ctr run -d with {extra}"));
}
