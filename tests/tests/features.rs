//! OOM events, checkpoint/restore, and the runtime's `-info` (2.x).

use std::time::Duration;

use serde_json::Value;
use shim_e2e::cmd;
use shim_e2e::events::EventWatcher;
use shim_e2e::util::wait_for;
use shim_e2e::{Ctx, IMAGE};

shim_e2e::scenarios! {
    oom_event,
    checkpoint,
    inspect_runtime,
}

/// A container that allocates past its `--memory-limit` is OOM-killed: the
/// `/tasks/oom` event for it arrives before its `/tasks/exit` (status 137).
fn oom_event(ctx: &Ctx) {
    let id = "c1";
    let watcher = EventWatcher::start(ctx, Duration::from_secs(120));
    let limit = (32u64 << 20).to_string();
    let out = ctx.ctr(&ctx.run_args(
        &["-d", "--memory-limit", &limit],
        IMAGE,
        id,
        &["sh", "-c", "a=x; while :; do a=$a$a; done"],
    ));
    ctx.check(&out, "run -d --memory-limit 32 MiB");
    ctx.wait_status(id, "STOPPED", Duration::from_secs(30));
    let exited = watcher.wait_for_topic(id, "/tasks/exit", Duration::from_secs(10));
    let events: Vec<_> = watcher
        .events_for(id)
        .into_iter()
        .filter(|e| e.topic.starts_with("/tasks/"))
        .collect();
    let dump = || {
        events
            .iter()
            .map(|e| format!("{} {}", e.topic, e.payload))
            .collect::<Vec<_>>()
            .join("\n")
    };
    ctx.ensure(exited, || format!("no /tasks/exit for {id}\n{}", dump()));
    let oom = events.iter().position(|e| e.topic == "/tasks/oom");
    let exit = events.iter().position(|e| e.topic == "/tasks/exit");
    ctx.ensure(oom.is_some(), || {
        format!("no /tasks/oom event for {id}\n{}", dump())
    });
    ctx.ensure(oom < exit, || {
        format!("/tasks/oom should come before /tasks/exit\n{}", dump())
    });
    let status = exit
        .and_then(|i| events[i].payload.get("exit_status"))
        .and_then(Value::as_u64);
    ctx.ensure(status == Some(137), || {
        format!("the OOM-killed init should exit with 137\n{}", dump())
    });
    ctx.ctr_ok(&["task", "delete", id]);
    ctx.ctr_ok(&["container", "rm", id]);
}

/// Whether CRIU works on this host.
fn criu_works() -> bool {
    let out = cmd::run(
        &["criu".to_string(), "check".to_string()],
        Duration::from_secs(30),
        &[] as &[(&str, std::ffi::OsString)],
    );
    out.ok()
}

/// Where `criu check` fails (this machine's kernel), `ctr c checkpoint
/// --task` fails; our OCI shim says why (CRIU, `criu check`), the process
/// and VM shims answer Unimplemented, and the container keeps running. Where CRIU works: a checkpoint/restore round trip.
fn checkpoint(ctx: &Ctx) {
    let id = "c1";
    let image = format!("harness.local/checkpoint-{}:1", ctx.ns);
    // The host's CRIU means nothing to the VM shim: it always answers Unimplemented.
    if !ctx.variant.is_vm() && criu_works() {
        return checkpoint_round_trip(ctx, id, &image);
    }
    let t = ctx.run_sleeper(id);
    let out = ctx.ctr(&["container", "checkpoint", "--task", id, &image]);
    ctx.ensure(!out.ok(), || {
        format!(
            "checkpoint must fail where `criu check` fails\n{}",
            out.describe()
        )
    });
    if ctx.variant.is_process() || ctx.variant.is_vm() {
        // The process shim has no CRIU path at all, nor has the VM shim (CRIU would have to
        // run in the guest, which has none): Unimplemented, as the contract says.
        let err = out.stderr_str();
        ctx.ensure(
            err.contains("not supported") || err.contains("not implemented"),
            || {
                format!(
                    "{} should answer Unimplemented\n{}",
                    ctx.variant.name(),
                    out.describe()
                )
            },
        );
    } else if ctx.variant.is_ours() {
        let err = out.stderr_str();
        ctx.ensure(err.contains("CRIU") && err.contains("criu check"), || {
            format!(
                "the error should name CRIU and `criu check` (FailedPrecondition)\n{}",
                out.describe()
            )
        });
    }
    if ctx.variant.is_ours() {
        let now = ctx.wait_status(id, "RUNNING", Duration::from_secs(5));
        ctx.ensure(now.pid == t.pid && ctx.task_pid_alive(id, t.pid), || {
            format!(
                "the container must keep running after the failed checkpoint: {now:?}, init {}",
                t.pid
            )
        });
    }
    let images = ctx.ctr_ok(&["images", "ls", "-q"]);
    if images.stdout_str().lines().any(|l| l.trim() == image) {
        let _ = ctx.ctr(&["images", "rm", &image]);
    }
    ctx.kill_and_remove(id);
}

/// CRIU works: checkpoint a counting container, delete it, restore it from
/// the checkpoint image, and see it continue from where it was.
fn checkpoint_round_trip(ctx: &Ctx, id: &str, image: &str) {
    ctx.run_detached(
        &[],
        IMAGE,
        id,
        &[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let out = ctx.ctr(&["container", "checkpoint", "--task", "--rw", id, image]);
    ctx.check(&out, "checkpoint");
    ctx.kill_and_remove(id);
    let out = ctx.ctr(&["container", "restore", "--live", "--rw", image, id]);
    ctx.check(&out, "restore");
    ctx.wait_status(id, "RUNNING", Duration::from_secs(20));
    let count = |ctx: &Ctx| -> u64 {
        let out = ctx.exec(
            id,
            &format!("r{}", shim_e2e::util::random_hex(2)),
            &[],
            &["cat", "/tmp/count"],
        );
        out.stdout_str().trim().parse().unwrap_or(0)
    };
    let c1 = count(ctx);
    let moving = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        (count(ctx) > c1).then_some(())
    });
    ctx.ensure(c1 >= 5 && moving.is_some(), || {
        format!("the restored counter should continue from its checkpoint (it read {c1})")
    });
    ctx.kill_and_remove(id);
    let _ = ctx.ctr(&["images", "rm", image]);
}

/// `ctr plugins inspect-runtime` (ctr 2.x only) makes containerd run the
/// shim's `-info`: our shims answer `io.containerd.oci.v1`,
/// `io.containerd.process.v1` and `io.containerd.vm.v1`, the reference
/// `io.containerd.runc.v2`.
fn inspect_runtime(ctx: &Ctx) {
    if !ctx.containerd_version().is_2x() {
        eprintln!(
            "SKIP inspect_runtime / {}: ctr {} has no `plugins inspect-runtime`",
            ctx.variant.name(),
            ctx.containerd_version().name()
        );
        return;
    }
    let mut args = vec!["plugins".to_string(), "inspect-runtime".to_string()];
    args.extend(ctx.rt.ctr_args());
    let out = ctx.ctr(&args);
    ctx.check(&out, "ctr plugins inspect-runtime");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        ctx.fail(format!(
            "inspect-runtime printed no JSON ({e})\n{}",
            out.describe()
        ))
    });
    let want = if ctx.variant.is_process() {
        "io.containerd.process.v1"
    } else if ctx.variant.is_vm() {
        "io.containerd.vm.v1"
    } else if ctx.variant.is_ours() {
        "io.containerd.oci.v1"
    } else {
        "io.containerd.runc.v2"
    };
    ctx.ensure(info["Name"].as_str() == Some(want), || {
        format!("Name should be {want}\n{}", out.describe())
    });
    ctx.ensure(
        info["Version"]["Version"]
            .as_str()
            .or(info["Version"].as_str())
            .is_some_and(|v| !v.is_empty()),
        || format!("Version should be set\n{}", out.describe()),
    );
}
