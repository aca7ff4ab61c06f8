//! Many containers at once and large outputs.

use std::time::{Duration, Instant};

use shim_e2e::util::{first_difference, seq_output, sha256_hex, wait_for};
use shim_e2e::{heavy, procfs, Ctx, IMAGE};

shim_e2e::scenarios! {
    twenty_containers,
    stdout_64mib,
    stdout_and_stderr_16mib,
}

const MIB: usize = 1 << 20;

// The big outputs end with `sleep 1`: ctr 1.6 cancels its IO (closing its
// fifo readers) as soon as it sees the exit and loses what it has not read
// yet; with the reference shim under load the last 4-64 KiB went missing
// about one time in ten. While the writer sleeps, the at most ~130 KiB in
// flight (pipe + fifo buffers) drain.

/// 20 detached containers run side by side, all RUNNING with their own
/// shim-managed init; then all are killed and deleted.
fn twenty_containers(ctx: &Ctx) {
    let _slot = heavy();
    // A VM boots per container, about 2 s of CPU each under software emulation: 6 of them
    // still run side by side (each in its own VM) without making CI minutes longer.
    let n: usize = if ctx.variant.is_vm() { 6 } else { 20 };
    let ids: Vec<String> = (0..n).map(|i| format!("m{i:02}")).collect();
    let chunk_len = n.div_ceil(4);
    // Start them from 4 threads: ctr run -d is mostly waiting.
    std::thread::scope(|s| {
        for chunk in ids.chunks(chunk_len) {
            s.spawn(move || {
                for id in chunk {
                    let out = ctx.ctr(&ctx.run_args(
                        &["-d"],
                        IMAGE,
                        id,
                        &[
                            "sh",
                            "-c",
                            &format!("echo {id} > /tmp/me; exec sleep 100000"),
                        ],
                    ));
                    ctx.check(&out, &format!("ctr run -d {id}"));
                }
            });
        }
    });
    let all_running = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        let tasks = ctx.tasks();
        let running = tasks.iter().filter(|t| t.status == "RUNNING").count();
        (running == ids.len() && tasks.len() == ids.len()).then_some(tasks)
    });
    let tasks =
        all_running.unwrap_or_else(|| ctx.fail(format!("not all {n} RUNNING: {:?}", ctx.tasks())));
    let mut vms: Vec<u32> = Vec::new();
    if ctx.variant.is_vm() {
        // Each in its own VM, where init pids may well be equal: one QEMU each instead.
        vms = ids.iter().map(|id| ctx.vm_pid(id)).collect();
        vms.sort();
        vms.dedup();
        ctx.ensure(vms.len() == n, || {
            format!("{n} containers should run in {n} VMs, found QEMU processes {vms:?}")
        });
    } else {
        let mut pids: Vec<u32> = tasks.iter().map(|t| t.pid).collect();
        pids.sort();
        pids.dedup();
        ctx.ensure(pids.len() == n, || {
            format!("init pids not distinct: {tasks:?}")
        });
    }
    for t in &tasks {
        // RUNNING comes before `sh` has exec'd the sleep; under load that
        // takes a moment.
        let _ = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            (ctx.init_argv(&t.id, t.pid) == ["sleep", "100000"]).then_some(())
        });
        let argv = ctx.init_argv(&t.id, t.pid);
        ctx.ensure(argv == ["sleep", "100000"], || {
            format!("{} pid {} is not its sleep: {argv:?}", t.id, t.pid)
        });
    }
    // Each container has its own filesystem.
    for id in ids.iter().step_by(n.div_ceil(3)) {
        let out = ctx.exec(id, "who", &[], &["sh", "-c", "cat /tmp/me; sleep 0.3"]);
        ctx.check(&out, "exec cat /tmp/me");
        ctx.ensure(out.stdout_str() == format!("{id}\n"), || out.describe());
    }
    std::thread::scope(|s| {
        for chunk in ids.chunks(chunk_len) {
            s.spawn(move || {
                for id in chunk {
                    let out = ctx.kill(id, "SIGKILL", false, None);
                    ctx.check(&out, &format!("kill {id}"));
                }
            });
        }
    });
    let all_stopped = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        ctx.tasks()
            .iter()
            .all(|t| t.status == "STOPPED")
            .then_some(())
    });
    ctx.ensure(all_stopped.is_some(), || {
        format!("not all STOPPED: {:?}", ctx.tasks())
    });
    std::thread::scope(|s| {
        for chunk in ids.chunks(chunk_len) {
            s.spawn(move || {
                for id in chunk {
                    let out = ctx.ctr(&["task", "delete", id]);
                    ctx.check(&out, &format!("task delete {id}"));
                    let out = ctx.ctr(&["container", "rm", id]);
                    ctx.check(&out, &format!("container rm {id}"));
                }
            });
        }
    });
    ctx.ensure(ctx.tasks().is_empty(), || {
        format!("tasks left: {:?}", ctx.tasks())
    });
    let shims_left = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        ids.iter()
            .all(|id| procfs::shim_pids(&ctx.ns, id).is_empty())
            .then_some(())
    });
    ctx.ensure(shims_left.is_some(), || {
        let left: Vec<_> = ids
            .iter()
            .map(|id| (id, procfs::shim_pids(&ctx.ns, id)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        format!("shim processes left: {left:?}")
    });
    let vms_left: Vec<u32> = vms.into_iter().filter(|p| procfs::alive(*p)).collect();
    ctx.ensure(vms_left.is_empty(), || {
        format!("QEMU processes left: {vms_left:?}")
    });
}

/// 64 MiB on stdout arrive complete and in order (unique lines from `seq`).
fn stdout_64mib(ctx: &Ctx) {
    let _slot = heavy();
    // In a VM under software emulation `seq` itself makes only about 1 MiB/s (64 MiB took two
    // minutes end to end), so 4 MiB keep CI time; completeness and order are checked the same
    // way.
    let len = if ctx.variant.is_vm() {
        4 * MIB
    } else {
        64 * MIB
    };
    let started = Instant::now();
    let out = ctx.ctr_timeout(
        Duration::from_secs(180),
        &ctx.run_args(
            &["--rm"],
            IMAGE,
            "c1",
            &[
                "sh",
                "-c",
                &format!("seq 1 100000000 | head -c {len}; sleep 1"),
            ],
        ),
    );
    eprintln!(
        "{} MiB through stdout in {:.1?}",
        len / MIB,
        started.elapsed()
    );
    ctx.check(&out, "big stdout run");
    let expected = seq_output(1, len);
    ctx.ensure(out.stdout == expected, || {
        format!(
            "stdout differs from `seq 1 N | head -c {len}`: {}; sha256 {} expected {}\nstderr: {}",
            first_difference(&expected, &out.stdout),
            sha256_hex(&out.stdout),
            sha256_hex(&expected),
            out.stderr_str()
        )
    });
    ctx.ensure(out.stderr.is_empty(), || {
        format!("stderr: {}", out.stderr_str())
    });
}

/// 16 MiB on stdout and 16 MiB on stderr written at the same time stay
/// apart, complete and in order.
fn stdout_and_stderr_16mib(ctx: &Ctx) {
    let _slot = heavy();
    // 2 + 2 MiB from a VM, for the guest's slow `seq` noted in `stdout_64mib`.
    let len = if ctx.variant.is_vm() {
        2 * MIB
    } else {
        16 * MIB
    };
    let script = format!(
        "seq 1 100000000 | head -c {len} & seq 500000000 600000000 | head -c {len} >&2; wait; sleep 1"
    );
    let out = ctx.ctr_timeout(
        Duration::from_secs(180),
        &ctx.run_args(&["--rm"], IMAGE, "c1", &["sh", "-c", &script]),
    );
    ctx.check(&out, "stdout + stderr run");
    let want_out = seq_output(1, len);
    let want_err = seq_output(500_000_000, len);
    ctx.ensure(out.stdout == want_out, || {
        format!("stdout: {}", first_difference(&want_out, &out.stdout))
    });
    ctx.ensure(out.stderr == want_err, || {
        format!("stderr: {}", first_difference(&want_err, &out.stderr))
    });
}
