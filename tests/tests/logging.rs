//! `--log-uri`: the shim sends the container's output to a logging binary
//! or appends it to a file.

use std::path::Path;
use std::time::Duration;

use shim_e2e::util::{excerpt, shell_quote, wait_for};
use shim_e2e::{Ctx, IMAGE};

shim_e2e::scenarios! {
    log_uri_binary,
    log_uri_file_appends,
}

/// A logger that records its argv and environment, copies fd 3 (stdout) and
/// fd 4 (stderr) to files, closes fd 5 (readiness: first, so that no child
/// keeps it open) and, once both streams hit EOF, creates `done`. It ignores SIGTERM (the Go shim sends one after
/// closing the pipes) so it can finish copying. Runs with no PATH.
fn write_logger(path: &Path, out: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let d = shell_quote(&out.display().to_string());
    let script = format!(
        "#!/bin/sh\n\
         trap '' TERM\n\
         exec 5>&-\n\
         printf '%s\\n' \"$@\" > {d}/argv\n\
         /usr/bin/env > {d}/env\n\
         /bin/cat <&3 > {d}/stdout 3<&- 4<&- &\n\
         /bin/cat <&4 > {d}/stderr 3<&- 4<&- &\n\
         exec 3<&- 4<&-\n\
         wait\n\
         : > {d}/done\n"
    );
    std::fs::write(path, script).expect("writing the logger");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the logger");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `--log-uri binary:///abs/logger?k=v`: the shim runs `logger k v` with
/// CONTAINER_ID and CONTAINER_NAMESPACE set, the container's stdout on its
/// fd 3 and stderr on fd 4.
fn log_uri_binary(ctx: &Ctx) {
    let out = ctx.work.join("logger-out");
    std::fs::create_dir_all(&out).expect("logger output dir");
    let logger = ctx.work.join("logger.sh");
    write_logger(&logger, &out);
    let uri = format!("binary://{}?k=v", logger.display());
    let run = ctx.ctr(&ctx.run_args(
        &["-d", "--log-uri", &uri],
        IMAGE,
        "c1",
        &["sh", "-c", "echo out-line; echo err-line >&2; sleep 0.3"],
    ));
    ctx.check(&run, "run -d --log-uri binary://");
    ctx.wait_status("c1", "STOPPED", Duration::from_secs(20));
    ctx.ctr_ok(&["task", "delete", "c1"]);
    ctx.ctr_ok(&["container", "rm", "c1"]);
    let done = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        out.join("done").exists().then_some(())
    });
    let state = || {
        ["argv", "env", "stdout", "stderr", "done"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f} ---\n{}",
                    excerpt(&std::fs::read(out.join(f)).unwrap_or_default(), 2000)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    ctx.ensure(done.is_some(), || {
        format!(
            "the logger did not see EOF on both streams within 20 s of the delete\n{}",
            state()
        )
    });
    ctx.ensure(read(&out.join("argv")) == "k\nv\n", || {
        format!("the logger's argv should be `k v`\n{}", state())
    });
    let env = read(&out.join("env"));
    let env: Vec<&str> = env.lines().collect();
    let ns_line = format!("CONTAINER_NAMESPACE={}", ctx.ns);
    ctx.ensure(
        env.contains(&"CONTAINER_ID=c1") && env.contains(&ns_line.as_str()),
        || {
            format!(
                "the logger's env should have CONTAINER_ID=c1 and {ns_line}\n{}",
                state()
            )
        },
    );
    ctx.ensure(
        read(&out.join("stdout")) == "out-line\n" && read(&out.join("stderr")) == "err-line\n",
        || {
            format!(
                "the logger should get stdout on fd 3, stderr on fd 4\n{}",
                state()
            )
        },
    );
}

/// The sorted lines of `text`.
fn sorted_lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().collect();
    v.sort_unstable();
    v
}

/// `--log-uri file:///abs/dir/x.log`: the shim creates the missing parent
/// directories and appends both streams to the file; a second container
/// with the same file appends after the first's output.
fn log_uri_file_appends(ctx: &Ctx) {
    let log = ctx.work.join("logs/a/b/x.log");
    ctx.ensure(!log.parent().expect("has a parent").exists(), || {
        "the log's parent must not exist yet".into()
    });
    let uri = format!("file://{}", log.display());
    let one = |id: &str, o: &str, e: &str| {
        let script = format!("echo {o}; sleep 0.1; echo {e} >&2; sleep 0.3");
        let run = ctx.ctr(&ctx.run_args(
            &["-d", "--log-uri", &uri],
            IMAGE,
            id,
            &["sh", "-c", &script],
        ));
        ctx.check(&run, "run -d --log-uri file://");
        ctx.wait_status(id, "STOPPED", Duration::from_secs(20));
        ctx.ctr_ok(&["task", "delete", id]);
        ctx.ctr_ok(&["container", "rm", id]);
    };
    one("c1", "out-1", "err-1");
    let first = read(&log);
    ctx.ensure(sorted_lines(&first) == ["err-1", "out-1"], || {
        format!(
            "{} should hold both streams of c1 (parents created), has {first:?}",
            log.display()
        )
    });
    one("c2", "out-2", "err-2");
    let both = read(&log);
    let rest = both.strip_prefix(first.as_str());
    ctx.ensure(
        rest.is_some_and(|r| sorted_lines(r) == ["err-2", "out-2"]),
        || {
            format!(
                "{} should keep c1's output and append c2's, has {both:?}",
                log.display()
            )
        },
    );
}
