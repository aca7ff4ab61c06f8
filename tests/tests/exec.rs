//! `ctr task exec`: stdio, tty, exit codes, concurrency, kill, and no leak in
//! the shim across many execs.

use std::time::Duration;

use shim_e2e::procfs;
use shim_e2e::util::{first_difference, pseudo_random_bytes, sha256_hex, tty_text, wait_for};
use shim_e2e::{Ctx, Stdin, CTR_TIMEOUT, IMAGE};

shim_e2e::scenarios! {
    exec_stdin,
    exec_tty,
    exec_exit_codes,
    exec_env_and_cwd,
    exec_concurrent,
    exec_kill,
    exec_no_shim_leak,
}

/// Text and binary data through an exec's stdin, EOF included.
fn exec_stdin(ctx: &Ctx) {
    ctx.run_sleeper("c1");
    let out = ctx.exec_with_stdin(
        "c1",
        "e1",
        &["sh", "-c", "cat; echo END; sleep 0.3"],
        b"hello exec\nsecond".to_vec(),
    );
    ctx.check(&out, "exec cat");
    ctx.ensure(out.stdout == b"hello exec\nsecondEND\n", || out.describe());

    let data = pseudo_random_bytes(1 << 20, 0xe8ec);
    let out = ctx.exec_with_stdin(
        "c1",
        "e2",
        &["sh", "-c", "sha256sum; sleep 0.3"],
        data.clone(),
    );
    ctx.check(&out, "exec sha256sum");
    let want = format!("{}  -\n", sha256_hex(&data));
    ctx.ensure(out.stdout_str() == want, || {
        format!("expected {want:?}\n{}", out.describe())
    });
    // `sleep`: ctr 1.6 drops output it has not read when it sees the exit
    // (see stdin_binary in io.rs).
    let out = ctx.exec_with_stdin("c1", "e3", &["sh", "-c", "cat; sleep 1"], data.clone());
    ctx.check(&out, "exec cat (binary)");
    ctx.ensure(out.stdout == data, || {
        format!(
            "echoed data differs: {}",
            first_difference(&data, &out.stdout)
        )
    });
    ctx.kill_and_remove("c1");
}

/// `ctr task exec -t`: the exec gets a terminal, typed input reaches it, and
/// its exit code comes back.
fn exec_tty(ctx: &Ctx) {
    ctx.run_sleeper("c1");
    let out = ctx.exec_tty(
        "c1",
        "e1",
        // The sleep lets ctr's resize of the pty land while the exec runs
        // (ctr logs an error into the terminal when the process is gone).
        &[
            "sh",
            "-c",
            "tty; [ -t 0 ] && [ -t 1 ] && echo ttys; sleep 0.5; exit 6",
        ],
        None,
    );
    ctx.check_code(&out, 6, "exec -t exit code");
    let text = tty_text(&out.stdout);
    ctx.ensure(
        text.starts_with("/dev/pts/") && text.ends_with("\nttys\n"),
        || format!("unexpected terminal output {text:?}\n{}", out.describe()),
    );
    let out = ctx.exec_tty(
        "c1",
        "e2",
        &["sh", "-c", "read l; echo \"exec-got:$l\"; sleep 0.5"],
        Some(b"typed text\n"),
    );
    ctx.check(&out, "exec -t with input");
    let text = tty_text(&out.stdout);
    ctx.ensure(text.contains("exec-got:typed text\n"), || {
        format!(
            "typed input did not come back: {text:?}\n{}",
            out.describe()
        )
    });
    ctx.kill_and_remove("c1");
}

/// Exit codes of execs: 0, 42, 255, and 137 when killed by SIGKILL; the
/// container is unaffected.
fn exec_exit_codes(ctx: &Ctx) {
    let t = ctx.run_sleeper("c1");
    for (i, (script, code)) in [
        ("exit 0", 0),
        ("exit 42", 42),
        ("exit 255", 255),
        ("kill -9 $$", 137),
    ]
    .into_iter()
    .enumerate()
    {
        let out = ctx.exec("c1", &format!("e{i}"), &[], &["sh", "-c", script]);
        ctx.check_code(&out, code, &format!("exec {script:?}"));
    }
    let out = ctx.exec("c1", "e-missing", &[], &["/no/such/binary"]);
    ctx.ensure(!out.ok(), || {
        format!("exec of a missing binary must fail\n{}", out.describe())
    });
    let now = ctx.wait_status("c1", "RUNNING", Duration::from_secs(2));
    ctx.ensure(now.pid == t.pid, || {
        format!("init changed: {now:?} vs {t:?}")
    });
    ctx.kill_and_remove("c1");
}

/// Execs inherit the container's environment; `--cwd` sets their directory.
fn exec_env_and_cwd(ctx: &Ctx) {
    ctx.run_detached(
        &["--env", "FROM_RUN=yes"],
        IMAGE,
        "c1",
        &["sleep", "100000"],
    );
    let out = ctx.exec(
        "c1",
        "e1",
        &["--cwd", "/tmp"],
        &["sh", "-c", "echo \"$FROM_RUN\"; pwd; sleep 0.3"],
    );
    ctx.check(&out, "exec with --cwd");
    ctx.ensure(out.stdout == b"yes\n/tmp\n", || out.describe());
    ctx.kill_and_remove("c1");
}

/// 10 execs at once: every one gets its own output and exit code.
fn exec_concurrent(ctx: &Ctx) {
    ctx.run_sleeper("c1");
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                s.spawn(move || {
                    let script = format!(
                        "echo exec-{i}-out; echo exec-{i}-err >&2; sleep 0.{i}; echo exec-{i}-done; sleep 0.3; exit {}",
                        10 + i
                    );
                    ctx.exec("c1", &format!("e{i}"), &[], &["sh", "-c", &script])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("exec thread"))
            .collect()
    });
    for (i, out) in outs.iter().enumerate() {
        ctx.check_code(out, 10 + i as i32, &format!("concurrent exec {i}"));
        ctx.ensure(
            out.stdout_str() == format!("exec-{i}-out\nexec-{i}-done\n")
                && out.stderr_str() == format!("exec-{i}-err\n"),
            || format!("exec {i} got someone else's output\n{}", out.describe()),
        );
    }
    ctx.kill_and_remove("c1");
}

/// `ctr task kill --exec-id` kills just that exec (137); the init keeps running.
fn exec_kill(ctx: &Ctx) {
    let t = ctx.run_sleeper("c1");
    let before = ctx.task_pids("c1").into_iter().collect();
    let mut child = ctx.spawn_ctr(
        CTR_TIMEOUT,
        &ctx.exec_args("c1", "e1", &[], &["sleep", "1000"]),
        Stdin::Null,
    );
    let new = ctx.wait_new_pid("c1", &before, &mut child);
    let k = ctx.kill("c1", "SIGKILL", false, Some("e1"));
    ctx.check(&k, "kill --exec-id e1");
    let out = child.wait();
    ctx.check_code(&out, 137, "killed exec");
    ctx.ensure(new.iter().all(|p| !ctx.task_pid_alive("c1", *p)), || {
        format!("exec process {new:?} still alive")
    });
    let now = ctx.wait_status("c1", "RUNNING", Duration::from_secs(2));
    ctx.ensure(now.pid == t.pid && ctx.task_pid_alive("c1", t.pid), || {
        "killing an exec must not stop the init".to_string()
    });
    ctx.kill_and_remove("c1");
}

/// 30 sequential execs do not make the shim grow threads or fds.
fn exec_no_shim_leak(ctx: &Ctx) {
    ctx.run_sleeper("c1");
    let shim = ctx.shim_pid("c1");
    // Warm up: the first execs may start worker threads that then stay.
    for i in 0..3 {
        let out = ctx.exec("c1", &format!("warm{i}"), &[], &["true"]);
        ctx.check(&out, "warm-up exec");
    }
    let settle = || {
        // Let exit handling and fifo closing finish; then sample.
        std::thread::sleep(Duration::from_millis(300));
        (procfs::thread_count(shim), procfs::fds(shim))
    };
    let (threads0, fds0) = settle();
    for i in 0..30 {
        let out = ctx.exec("c1", &format!("x{i}"), &[], &["sh", "-c", "echo $$"]);
        ctx.check(&out, &format!("exec {i}"));
    }
    // Allow transient growth to drain.
    let settled = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let (t, f) = settle();
        (t <= threads0 + 2 && f.len() <= fds0.len() + 2).then_some((t, f))
    });
    if let Some((t, f)) = &settled {
        eprintln!(
            "shim {shim}: threads {threads0} -> {t}, fds {} -> {}",
            fds0.len(),
            f.len()
        );
    }
    ctx.ensure(settled.is_some(), || {
        let (t, f) = settle();
        format!(
            "shim {shim} grew over 30 execs: threads {threads0} -> {t}, fds {} -> {}\nfds before: {fds0:?}\nfds after: {f:?}",
            fds0.len(),
            f.len()
        )
    });
    ctx.kill_and_remove("c1");
}
