//! Stdio, exit codes, tty, environment, users, specs and mounts.

use serde_json::json;
use shim_e2e::util::{first_difference, pseudo_random_bytes, seq_output, sha256_hex, tty_text};
use shim_e2e::{Ctx, IMAGE, IMAGE_USER};
use std::time::Duration;

shim_e2e::scenarios! {
    stdout_exact,
    stdout_stderr_apart,
    large_output_exact,
    exit_codes,
    exit_killed_137,
    stdin_text,
    stdin_binary,
    tty_output,
    tty_input,
    env_and_cwd,
    image_user,
    oci_spec_config,
    readonly_rootfs_with_bind,
    log_uri_file_complete_at_exit,
}

/// Bytes printed by the container arrive unchanged: no added newline, NULs,
/// high bytes, CRs, a line without terminator.
fn stdout_exact(ctx: &Ctx) {
    let script =
        r"printf 'first line\n\000\001\377 \r\n\ttabbed\\ back\nno newline at end'; sleep 0.3";
    let out = ctx.run(&[], IMAGE, "c1", &["sh", "-c", script]);
    ctx.check(&out, "run printf");
    let expected: &[u8] = b"first line\n\x00\x01\xff \r\n\ttabbed\\ back\nno newline at end";
    ctx.ensure(out.stdout == expected, || {
        format!(
            "stdout differs: {}\n{}",
            first_difference(expected, &out.stdout),
            out.describe()
        )
    });
    ctx.ensure(out.stderr.is_empty(), || {
        format!("stderr should be empty\n{}", out.describe())
    });
}

/// stdout and stderr stay separate streams, each in order.
fn stdout_stderr_apart(ctx: &Ctx) {
    let script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf out3; printf err3 >&2; sleep 0.3";
    let out = ctx.run(&[], IMAGE, "c1", &["sh", "-c", script]);
    ctx.check(&out, "run");
    ctx.ensure(out.stdout == b"out1\nout2\nout3", || {
        format!("stdout must hold exactly the out lines\n{}", out.describe())
    });
    ctx.ensure(out.stderr == b"err1\nerr2\nerr3", || {
        format!("stderr must hold exactly the err lines\n{}", out.describe())
    });
}

/// Blocks of [`large_output_exact`]: 64 of them, about 64 MiB in all.
const LARGE_BLOCKS: usize = 64;

/// Block `i` of [`large_output_exact`]'s stdout: a numbered line, then zeros; the lengths vary
/// so that blocks end at every alignment.
fn large_block_len(i: usize) -> usize {
    917_503 + i * 4099
}

/// About 64 MiB of stdout, with a line on stderr after each block, arrives byte for byte (the
/// checksum of the whole), in order (the numbered blocks), and the two streams stay apart: the
/// bulk path of the VM shim (frames over a port of their own) against what the others do.
fn large_output_exact(ctx: &Ctx) {
    let script = format!(
        "i=0; while [ $i -lt {LARGE_BLOCKS} ]; do printf 'out %05d\\n' $i; \
         head -c $((917503 + i * 4099)) /dev/zero; echo \"err $i\" >&2; i=$((i + 1)); done"
    );
    let mut expected = Vec::new();
    let mut expected_err = String::new();
    for i in 0..LARGE_BLOCKS {
        expected.extend_from_slice(format!("out {i:05}\n").as_bytes());
        expected.resize(expected.len() + large_block_len(i), 0);
        expected_err.push_str(&format!("err {i}\n"));
    }
    let out = ctx.run(&[], IMAGE, "c1", &["sh", "-c", &script]);
    ctx.check(&out, "run the 64 MiB writer");
    ctx.ensure(out.stdout.len() == expected.len(), || {
        format!(
            "stdout has {} bytes, expected {}; {}",
            out.stdout.len(),
            expected.len(),
            first_difference(&expected, &out.stdout)
        )
    });
    ctx.ensure(sha256_hex(&out.stdout) == sha256_hex(&expected), || {
        format!(
            "stdout differs (sha256): {}",
            first_difference(&expected, &out.stdout)
        )
    });
    ctx.ensure(out.stderr == expected_err.as_bytes(), || {
        format!(
            "stderr must hold exactly the {LARGE_BLOCKS} err lines in order, got {:?}",
            String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(400)])
        )
    });
}

/// `ctr run` returns the init's exit code.
fn exit_codes(ctx: &Ctx) {
    for (i, code) in [0, 3, 255].into_iter().enumerate() {
        let id = format!("c{i}");
        let out = ctx.run(
            &[],
            IMAGE,
            &id,
            &[
                "sh",
                "-c",
                &format!("echo code {code}; sleep 0.3; exit {code}"),
            ],
        );
        ctx.check_code(&out, code, &format!("exit {code}"));
        ctx.ensure(out.stdout_str() == format!("code {code}\n"), || {
            format!("unexpected stdout\n{}", out.describe())
        });
    }
}

/// An init killed with SIGKILL from outside reports 137.
fn exit_killed_137(ctx: &Ctx) {
    let mut child = ctx.spawn_run(&[], IMAGE, "c1", &["sleep", "1000"]);
    ctx.wait_running_or_exit("c1", &mut child);
    let k = ctx.kill("c1", "SIGKILL", false, None);
    ctx.check(&k, "kill -s SIGKILL");
    let out = child.wait();
    ctx.check_code(&out, 137, "init killed by SIGKILL");
}

/// Text on stdin reaches the init, EOF included.
fn stdin_text(ctx: &Ctx) {
    let input = b"line1\nline two\n\nlast without newline".to_vec();
    let out = ctx.run_with_stdin(
        &[],
        IMAGE,
        "c1",
        &["sh", "-c", "cat; echo; echo END; sleep 0.3"],
        input.clone(),
    );
    ctx.check(&out, "cat from stdin");
    let mut expected = input;
    expected.extend_from_slice(b"\nEND\n");
    ctx.ensure(out.stdout == expected, || {
        format!(
            "stdin did not come back: {}\n{}",
            first_difference(&expected, &out.stdout),
            out.describe()
        )
    });
}

/// 2 MiB of binary data through stdin, checked inside (sha256sum, wc -c) and
/// echoed back byte-exact on stdout.
///
/// The trailing `sleep` works around ctr 1.6: when it sees the exit it
/// cancels its IO, closing its fifo readers, and loses whatever it has not
/// read yet (observed with the reference shim under load: the last 4-64 KiB).
fn stdin_binary(ctx: &Ctx) {
    let input = pseudo_random_bytes(2 << 20, 0x5eed);
    let want = sha256_hex(&input);
    let out = ctx.run_with_stdin(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "cat > /tmp/in && sha256sum /tmp/in >&2 && wc -c < /tmp/in >&2 && cat /tmp/in; sleep 1",
        ],
        input.clone(),
    );
    ctx.check(&out, "binary stdin");
    let err = out.stderr_str();
    let mut lines = err.lines();
    let got_sum = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("");
    let got_len = lines.next().unwrap_or("").trim();
    ctx.ensure(got_sum == want && got_len == input.len().to_string(), || {
        format!(
            "inside the container: sha256 {got_sum:?} length {got_len:?}; sent sha256 {want} length {}\n{}",
            input.len(),
            out.describe()
        )
    });
    ctx.ensure(out.stdout == input, || {
        format!(
            "echoed data differs: {}",
            first_difference(&input, &out.stdout)
        )
    });
}

/// With `-t` the init has a terminal on stdin/stdout, output comes through
/// the pty, and the exit code survives.
fn tty_output(ctx: &Ctx) {
    let out = ctx.run_tty(
        &[],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            // The sleep lets ctr's resize of the pty land while the init runs.
            "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; echo hello; sleep 0.5; exit 5",
        ],
        None,
    );
    ctx.check_code(&out, 5, "tty run exits 5");
    let text = tty_text(&out.stdout);
    ctx.ensure(text == "/dev/pts/0\nall-ttys\nhello\n", || {
        format!("unexpected terminal output {text:?}\n{}", out.describe())
    });
    ctx.ensure(out.stdout.windows(3).any(|w| w == b"\r\r\n"), || {
        format!("expected pty line ends (\\r\\r\\n)\n{}", out.describe())
    });
}

/// Keyboard input typed into the terminal reaches the init.
fn tty_input(ctx: &Ctx) {
    let out = ctx.run_tty(
        &[],
        IMAGE,
        "c1",
        &["sh", "-c", "read line; echo \"got:$line\"; sleep 0.5"],
        Some(b"ping pong\n"),
    );
    ctx.check(&out, "tty input");
    let text = tty_text(&out.stdout);
    ctx.ensure(text.contains("got:ping pong\n"), || {
        format!(
            "the typed line did not come back: {text:?}\n{}",
            out.describe()
        )
    });
}

/// `--env` adds variables next to the image's, `--cwd` sets the directory.
fn env_and_cwd(ctx: &Ctx) {
    let out = ctx.run(
        &[
            "--env",
            "FOO=bar",
            "--env",
            "SPACED=a b  c",
            "--cwd",
            "/home/harness",
        ],
        IMAGE,
        "c1",
        &["sh", "-c", "echo \"$FOO|$SPACED|$PATH\"; pwd; sleep 0.3"],
    );
    ctx.check(&out, "run with env and cwd");
    let expected =
        "bar|a b  c|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/home/harness\n";
    ctx.ensure(out.stdout_str() == expected, || {
        format!("expected {expected:?}\n{}", out.describe())
    });
}

/// The image's `User` applies: uid 1000, gid 1000 and the supplementary group.
fn image_user(ctx: &Ctx) {
    let out = ctx.run(&[], IMAGE_USER, "c1", &["sh", "-c", "id; sleep 0.3"]);
    ctx.check(&out, "id as the image user");
    let expected = "uid=1000(harness) gid=1000(harness) groups=1000(harness),1001(extra)\n";
    ctx.ensure(out.stdout_str() == expected, || {
        format!("expected {expected:?}\n{}", out.describe())
    });
    let out = ctx.run(
        &[],
        IMAGE_USER,
        "c2",
        &["sh", "-c", "touch /tmp/x && ls -n /tmp/x; sleep 0.3"],
    );
    ctx.check(&out, "files created by the image user");
    ctx.ensure(
        out.stdout_str().split_whitespace().nth(2) == Some("1000"),
        || format!("file owner should be uid 1000\n{}", out.describe()),
    );
}

/// A complete OCI spec (`ctr run --config`): absolute root path, hostname,
/// user, env, cwd and args all come from the file.
fn oci_spec_config(ctx: &Ctx) {
    let id = "c1";
    let root = ctx.work.join("specroot");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&ctx.daemon.image.rootfs)
        .arg(&root)
        .status()
        .expect("running cp");
    assert!(cp.success(), "copying the rootfs to {}", root.display());
    let base = ctx.ctr(&["oci", "spec"]);
    ctx.check(&base, "ctr oci spec");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&base.stdout).expect("ctr oci spec prints JSON");
    spec["root"] = json!({ "path": root.display().to_string(), "readonly": true });
    spec["hostname"] = json!("spec-host");
    spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000, "additionalGids": [1001] });
    spec["process"]["args"] = json!([
        "sh",
        "-c",
        "hostname; id -u; id -g; id -G; pwd; echo \"$SPEC_VAR\"; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; sleep 0.3"
    ]);
    spec["process"]["env"] = json!(["PATH=/bin:/usr/bin", "SPEC_VAR=from-spec"]);
    spec["process"]["cwd"] = json!("/tmp");
    spec["process"]["terminal"] = json!(false);
    spec["linux"]["cgroupsPath"] = json!(ctx.cgroup_rel(id));
    let spec_path = ctx.work.join("spec.json");
    std::fs::write(
        &spec_path,
        serde_json::to_vec_pretty(&spec).expect("spec JSON"),
    )
    .expect("writing spec.json");

    let mut args = ctx.run_prefix(&["--rm", "--config", &spec_path.display().to_string()]);
    args.push(id.to_string());
    let out = ctx.ctr(&args);
    ctx.check(&out, "run --config spec.json");
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    ctx.ensure(
        lines.len() == 8
            && lines[..6]
                == [
                    "spec-host",
                    "1000",
                    "1000",
                    "1000 1001",
                    "/tmp",
                    "from-spec",
                ]
            && lines[6].split_whitespace().collect::<Vec<_>>() == ["CapEff:", "0000000000000000"]
            && lines[7].split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"],
        || format!("unexpected output\n{}", out.describe()),
    );
}

/// `--read-only` makes the rootfs read-only while a `--mount ...rw` bind
/// mount stays writable and writes reach the host.
fn readonly_rootfs_with_bind(ctx: &Ctx) {
    let host = ctx.work.join("bind");
    std::fs::create_dir_all(&host).expect("creating the bind source");
    std::fs::write(host.join("from-host"), b"host data\n").expect("writing the bind source");
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        host.display()
    );
    let out = ctx.run(
        &["--read-only", "--mount", &mount],
        IMAGE,
        "c1",
        &[
            "sh",
            "-c",
            "if touch /rootfs-write 2>/dev/null; then echo root-writable; else echo root-ro; fi; \
             cat /data/from-host; echo written > /data/from-container && echo bind-rw; sleep 0.3",
        ],
    );
    ctx.check(&out, "read-only run with a bind mount");
    ctx.ensure(out.stdout_str() == "root-ro\nhost data\nbind-rw\n", || {
        format!("unexpected output\n{}", out.describe())
    });
    let written = std::fs::read(host.join("from-container")).unwrap_or_default();
    ctx.ensure(written == b"written\n", || {
        format!("the host should see the container's write in the bind source, got {written:?}")
    });
}

/// `--log-uri file:///...`: the shim writes the output to the file itself.
/// The process exits right after writing 1 MiB, and all of it is in the
/// file once the task is deleted. (This is the one place where output
/// produced just before the exit is checked without ctr in the path: ctr 1.6
/// itself drops what it has not read when it sees the exit.)
fn log_uri_file_complete_at_exit(ctx: &Ctx) {
    let log = ctx.work.join("task.log");
    let uri = format!("file://{}", log.display());
    let len = 1 << 20;
    let out = ctx.ctr(&ctx.run_args(
        &["-d", "--log-uri", &uri],
        IMAGE,
        "c1",
        &["sh", "-c", &format!("seq 1 1000000 | head -c {len}")],
    ));
    ctx.check(&out, "run -d --log-uri file://");
    ctx.wait_status("c1", "STOPPED", Duration::from_secs(20));
    let out = ctx.ctr(&["task", "delete", "c1"]);
    ctx.check(&out, "task delete");
    ctx.ctr_ok(&["container", "rm", "c1"]);
    let got = std::fs::read(&log).unwrap_or_default();
    let expected = seq_output(1, len);
    ctx.ensure(got == expected, || {
        format!("{}: {}", log.display(), first_difference(&expected, &got))
    });
}
