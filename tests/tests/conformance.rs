//! OCI conformance table: each scenario is one spec feature. The same
//! `config.json` (from `ctr oci spec`, root = a private copy of the busybox
//! rootfs, changed to exercise the feature) runs under containerd's reference
//! shim (`io.containerd.runc.v2`) and under our process shim; the row's
//! expectation must hold for both, and our output must equal runc's (after
//! normalising what legitimately differs). Only the process variants run the
//! table (each test runs both shims itself); the others print SKIP.

use serde_json::{json, Value};
use shim_e2e::{CmdOutput, Ctx, IMAGE};
use std::path::PathBuf;
use std::time::Duration;

shim_e2e::scenarios! {
    conf_capabilities,
    conf_no_new_privs,
    conf_seccomp,
    conf_rlimit_nofile,
    conf_user,
    conf_hostname,
    conf_tmpfs_mount,
    conf_masked_path,
    conf_readonly_path,
    conf_cgroup_memory,
    conf_hooks,
    conf_joined_netns,
    conf_userns,
    conf_cgroupns,
}

/// Time bound for one `ctr run --config`.
const RUN_LIMIT: Duration = Duration::from_secs(40);
/// containerd's Go shim, the reference.
const REFERENCE: &str = "io.containerd.runc.v2";

/// One row: how to change the base spec, the script run inside, the row's
/// own expectation (on the combined output) and a normaliser applied before
/// comparing ours with runc's.
struct Row<'a> {
    name: &'a str,
    mutate: &'a dyn Fn(&mut Value, &Env),
    script: &'a str,
    expect: &'a dyn Fn(&str) -> Result<(), String>,
    normalise: &'a dyn Fn(&str) -> String,
}

/// What a mutation may need to know about the run.
struct Env {
    /// Container id of this run.
    id: String,
    /// Which shim ("runc" or "ours"), for per-run host paths.
    who: &'static str,
}

/// Skip the non-process variants; returns true when the row should run.
fn process_only(ctx: &Ctx, row: &str) -> bool {
    if ctx.variant.is_process() {
        return true;
    }
    eprintln!(
        "SKIP {row} / {}: the conformance table runs on the process variants (each runs runc and ours)",
        ctx.variant.name()
    );
    false
}

/// A private copy of the busybox rootfs under the test's work dir.
fn rootfs_copy(ctx: &Ctx) -> PathBuf {
    let root = ctx.work.join("rootfs");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&ctx.daemon.image.rootfs)
        .arg(&root)
        .status()
        .expect("running cp");
    assert!(cp.success(), "copying the rootfs to {}", root.display());
    std::fs::create_dir_all(root.join("conf-ro")).expect("creating /conf-ro in the rootfs");
    root
}

/// The base spec: `ctr oci spec` with our root, process and cgroup path.
fn base_spec(ctx: &Ctx, root: &std::path::Path, id: &str, script: &str) -> Value {
    let base = ctx.ctr(&["oci", "spec"]);
    ctx.check(&base, "ctr oci spec");
    let mut spec: Value = serde_json::from_slice(&base.stdout).expect("ctr oci spec prints JSON");
    spec["root"] = json!({ "path": root.display().to_string(), "readonly": false });
    // Let ctr 1.6 read the output before it sees the exit.
    let full = format!("{{ {script}\n}} 2>&1; sleep 0.3");
    spec["process"]["args"] = json!(["sh", "-c", full]);
    spec["process"]["env"] = json!(["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]);
    spec["process"]["cwd"] = json!("/");
    spec["process"]["terminal"] = json!(false);
    spec["linux"]["cgroupsPath"] = json!(ctx.cgroup_rel(id));
    spec
}

/// `ctr run --rm --runtime RT --config spec.json ID` for runtime args `rt`.
fn run_spec(ctx: &Ctx, rt: &[String], id: &str, spec: &Value) -> CmdOutput {
    let spec_path = ctx.work.join(format!("{id}.json"));
    std::fs::write(
        &spec_path,
        serde_json::to_vec_pretty(spec).expect("spec JSON"),
    )
    .expect("writing the spec");
    let mut args = vec!["run".to_string()];
    args.extend(rt.iter().cloned());
    args.push("--fifo-dir".to_string());
    args.push(ctx.daemon.fifo_dir.display().to_string());
    args.push("--rm".to_string());
    args.push("--config".to_string());
    args.push(spec_path.display().to_string());
    args.push(id.to_string());
    let out = ctx.ctr_timeout(RUN_LIMIT, &args);
    if !out.ok() {
        // Leave nothing behind for the next run.
        ctx.kill_and_remove(id);
    }
    out
}

/// Run `row` with runc and ours, check both and compare; fail on a problem.
fn run_row(ctx: &Ctx, row: &Row) {
    let problems = row_problems(ctx, row);
    ctx.ensure(problems.is_empty(), || {
        format!("row {}:\n{}", row.name, problems.join("\n"))
    });
}

/// Run `row` with runc and ours, check both and compare; the problems found.
fn row_problems(ctx: &Ctx, row: &Row) -> Vec<String> {
    let root = rootfs_copy(ctx);
    row_problems_in(ctx, row, &root)
}

/// [`row_problems`] with the rootfs at `root`.
fn row_problems_in(ctx: &Ctx, row: &Row, root: &std::path::Path) -> Vec<String> {
    let reference = vec!["--runtime".to_string(), REFERENCE.to_string()];
    let ours = ctx.rt.ctr_args();
    let mut outputs = Vec::new();
    for (who, rt) in [("runc", &reference), ("ours", &ours)] {
        let env = Env {
            id: format!("{}-{who}", row.name),
            who,
        };
        let mut spec = base_spec(ctx, root, &env.id, row.script);
        (row.mutate)(&mut spec, &env);
        let out = run_spec(ctx, rt, &env.id, &spec);
        let text = out.stdout_str();
        eprintln!(
            "[{} / {who}] exit {:?}\n{text}{}",
            row.name,
            out.code,
            out.stderr_str()
        );
        outputs.push((who, out, text));
    }
    let mut problems = Vec::new();
    for (who, out, text) in &outputs {
        if !out.ok() {
            problems.push(format!("{who}: ctr run failed\n{}", out.describe()));
            continue;
        }
        if let Err(e) = (row.expect)(text) {
            problems.push(format!("{who}: expectation: {e}\n--- output ---\n{text}"));
        }
    }
    let runc = (row.normalise)(&outputs[0].2);
    let ours = (row.normalise)(&outputs[1].2);
    if runc != ours {
        problems.push(format!(
            "ours differs from runc (normalised)\n--- runc ---\n{runc}\n--- ours ---\n{ours}"
        ));
    }
    problems
}

fn same(s: &str) -> String {
    s.to_string()
}

fn has(text: &str, needle: &str) -> Result<(), String> {
    if text.contains(needle) {
        Ok(())
    } else {
        Err(format!("missing {needle:?}"))
    }
}

fn has_all(text: &str, needles: &[&str]) -> Result<(), String> {
    needles.iter().try_for_each(|n| has(text, n))
}

// ------------------------------------------------------------------ rows --

/// A reduced capability set shows in every /proc/self/status Cap* line.
fn conf_capabilities(ctx: &Ctx) {
    if !process_only(ctx, "conf_capabilities") {
        return;
    }
    let set = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    run_row(
        ctx,
        &Row {
            name: "caps",
            mutate: &|s, _| {
                s["process"]["capabilities"] = json!({
                    "bounding": set, "effective": set, "permitted": set,
                    "inheritable": set, "ambient": ["CAP_NET_BIND_SERVICE"],
                });
            },
            script: "grep ^Cap /proc/self/status",
            expect: &|t| {
                has_all(
                    t,
                    &[
                        "CapInh:\t0000000000000421",
                        "CapPrm:\t0000000000000421",
                        "CapEff:\t0000000000000421",
                        "CapBnd:\t0000000000000421",
                        "CapAmb:\t0000000000000400",
                    ],
                )
            },
            normalise: &same,
        },
    );
}

/// noNewPrivileges sets NoNewPrivs.
fn conf_no_new_privs(ctx: &Ctx) {
    if !process_only(ctx, "conf_no_new_privs") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "nnp",
            mutate: &|s, _| s["process"]["noNewPrivileges"] = json!(true),
            script: "grep ^NoNewPrivs /proc/self/status",
            expect: &|t| has(t, "NoNewPrivs:\t1"),
            normalise: &same,
        },
    );
}

/// A seccomp filter (default allow) denying mkdir/mkdirat with EPERM.
fn conf_seccomp(ctx: &Ctx) {
    if !process_only(ctx, "conf_seccomp") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "seccomp",
            mutate: &|s, _| {
                s["linux"]["seccomp"] = json!({
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                    "syscalls": [{
                        "names": ["mkdir", "mkdirat"],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": 1
                    }]
                });
            },
            script: "grep ^Seccomp: /proc/self/status; mkdir /tmp/denied; echo mkdir=$?; \
                     touch /tmp/file && echo touch-ok; ls / >/dev/null && echo ls-ok",
            expect: &|t| {
                has_all(
                    t,
                    &[
                        "Seccomp:\t2",
                        "Operation not permitted",
                        "mkdir=1",
                        "touch-ok",
                        "ls-ok",
                    ],
                )
            },
            normalise: &same,
        },
    );
}

/// RLIMIT_NOFILE soft/hard.
fn conf_rlimit_nofile(ctx: &Ctx) {
    if !process_only(ctx, "conf_rlimit_nofile") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "rlimit",
            mutate: &|s, _| {
                s["process"]["rlimits"] =
                    json!([{ "type": "RLIMIT_NOFILE", "hard": 1234, "soft": 567 }]);
            },
            script: "ulimit -n; grep 'open files' /proc/self/limits",
            expect: &|t| {
                let first = t.lines().next().unwrap_or("");
                if first != "567" {
                    return Err(format!("ulimit -n printed {first:?}"));
                }
                let l = t.lines().nth(1).unwrap_or("");
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.get(3) == Some(&"567") && f.get(4) == Some(&"1234") {
                    Ok(())
                } else {
                    Err(format!("limits line {l:?}"))
                }
            },
            normalise: &same,
        },
    );
}

/// uid, gid and additionalGids.
fn conf_user(ctx: &Ctx) {
    if !process_only(ctx, "conf_user") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "user",
            mutate: &|s, _| {
                s["process"]["user"] =
                    json!({ "uid": 1000, "gid": 1000, "additionalGids": [1001, 1002] });
            },
            script: "id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups)' /proc/self/status",
            expect: &|t| {
                let l: Vec<&str> = t.lines().collect();
                if l.len() >= 3 && l[0] == "1000" && l[1] == "1000" {
                    has_all(l[2], &["1001", "1002"])
                } else {
                    Err("id -u / id -g are not 1000".to_string())
                }
            },
            normalise: &same,
        },
    );
}

/// hostname (own UTS namespace).
fn conf_hostname(ctx: &Ctx) {
    if !process_only(ctx, "conf_hostname") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "hostname",
            mutate: &|s, _| s["hostname"] = json!("conf-host"),
            script: "hostname; cat /proc/sys/kernel/hostname",
            expect: &|t| {
                if t == "conf-host\nconf-host\n" {
                    Ok(())
                } else {
                    Err("hostname is not conf-host".to_string())
                }
            },
            normalise: &same,
        },
    );
}

/// A new cgroup namespace is rooted at the container's own cgroup: every
/// hierarchy's path reads `/` from inside. (The process is born in its cgroup
/// and only then enters the namespace; entering it first would root it at the
/// runtime's cgroup.)
fn conf_cgroupns(ctx: &Ctx) {
    if !process_only(ctx, "conf_cgroupns") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "cgroupns",
            mutate: &|s, _| {
                s["linux"]["namespaces"]
                    .as_array_mut()
                    .expect("namespaces")
                    .push(json!({ "type": "cgroup" }));
            },
            script: "cat /proc/self/cgroup",
            expect: &|t| {
                let lines: Vec<&str> = t.lines().collect();
                if !lines.is_empty() && lines.iter().all(|l| l.ends_with(":/")) {
                    Ok(())
                } else {
                    Err(format!(
                        "cgroup paths are not rooted at the container's: {t:?}"
                    ))
                }
            },
            normalise: &same,
        },
    );
}

/// A tmpfs mount of the spec appears in /proc/mounts with its options.
fn conf_tmpfs_mount(ctx: &Ctx) {
    if !process_only(ctx, "conf_tmpfs_mount") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "tmpfs",
            mutate: &|s, _| {
                s["mounts"].as_array_mut().expect("mounts").push(json!({
                    "destination": "/conftmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=1777"]
                }));
            },
            script: "grep ' /conftmp ' /proc/mounts; touch /conftmp/f && echo write-ok",
            expect: &|t| {
                has_all(
                    t,
                    &[
                        "tmpfs /conftmp tmpfs rw,nosuid,nodev,noexec",
                        "size=1024k",
                        "write-ok",
                    ],
                )
            },
            normalise: &same,
        },
    );
}

/// maskedPaths: files read empty, a directory lists empty (this host has no
/// /proc/kcore; a masked path that does not exist is skipped, so /proc/meminfo
/// and /proc/cpuinfo carry the file case).
fn conf_masked_path(ctx: &Ctx) {
    if !process_only(ctx, "conf_masked_path") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "masked",
            mutate: &|s, _| {
                s["linux"]["maskedPaths"] =
                    json!(["/proc/kcore", "/proc/meminfo", "/proc/cpuinfo", "/sys/firmware"])
            },
            script: "echo kcore=$(cat /proc/kcore 2>/dev/null | wc -c); \
                     echo meminfo=$(wc -c < /proc/meminfo); echo cpuinfo=$(wc -c < /proc/cpuinfo); \
                     echo firmware=$(ls -A /sys/firmware | wc -l); echo unmasked=$(grep -c . /proc/version)",
            expect: &|t| has_all(t, &["kcore=0\n", "meminfo=0\n", "cpuinfo=0\n", "firmware=0\n", "unmasked=1\n"]),
            normalise: &same,
        },
    );
}

/// readonlyPaths: writes fail with EROFS.
fn conf_readonly_path(ctx: &Ctx) {
    if !process_only(ctx, "conf_readonly_path") {
        return;
    }
    run_row(
        ctx,
        &Row {
            name: "readonly",
            mutate: &|s, _| s["linux"]["readonlyPaths"] = json!(["/proc/sys", "/conf-ro"]),
            script: "touch /conf-ro/f; echo touch=$?; echo x > /proc/sys/kernel/domainname; \
                     echo write=$?; touch /tmp/ok && echo rest-writable",
            expect: &|t| {
                has_all(
                    t,
                    &[
                        "touch: /conf-ro/f: Read-only file system",
                        "touch=1",
                        "Read-only file system",
                        "write=1",
                        "rest-writable",
                    ],
                )
            },
            normalise: &same,
        },
    );
}

/// A memory limit shows in the container's cgroup (v1, through a cgroup
/// mount added to the spec) and on the host (read by a poststart hook from
/// `/sys/fs/cgroup/memory/<cgroupsPath>`).
fn conf_cgroup_memory(ctx: &Ctx) {
    if !process_only(ctx, "conf_cgroup_memory") {
        return;
    }
    let dir = ctx.work.join("cg");
    std::fs::create_dir_all(&dir).expect("creating the cg dir");
    let d = dir.clone();
    let ns = ctx.ns.clone();
    let mut bad = row_problems(
        ctx,
        &Row {
            name: "cgmem",
            mutate: &move |s, e: &Env| {
                s["linux"]["resources"]["memory"] = json!({ "limit": 67108864 });
                s["mounts"].as_array_mut().expect("mounts").push(json!({
                    "destination": "/sys/fs/cgroup",
                    "type": "cgroup",
                    "source": "cgroup",
                    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
                }));
                let host = format!("/sys/fs/cgroup/memory/{ns}/{}/memory.limit_in_bytes", e.id);
                let file = d.join(e.who);
                s["hooks"] = json!({ "poststart": [{
                    "path": "/bin/sh",
                    "args": ["sh", "-c", format!("cat {host} > {}", file.display())],
                    "timeout": 10
                }]});
            },
            script: "echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)",
            expect: &|t| has(t, "limit=67108864\n"),
            normalise: &same,
        },
    );
    for who in ["runc", "ours"] {
        let got = std::fs::read_to_string(dir.join(who)).unwrap_or_default();
        if got != "67108864\n" {
            bad.push(format!(
                "{who}: host cgroup memory.limit_in_bytes read {got:?}"
            ));
        }
    }
    ctx.ensure(bad.is_empty(), || format!("row cgmem:\n{}", bad.join("\n")));
}

/// createRuntime and poststart hooks run on the host (side effect checked
/// after the run).
fn conf_hooks(ctx: &Ctx) {
    if !process_only(ctx, "conf_hooks") {
        return;
    }
    let dir = ctx.work.join("hooks");
    std::fs::create_dir_all(&dir).expect("creating the hooks dir");
    let hook = |file: PathBuf| {
        json!([{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("echo x > {}", file.display())],
            "timeout": 10
        }])
    };
    let d = dir.clone();
    let mut missing = row_problems(
        ctx,
        &Row {
            name: "hooks",
            mutate: &move |s, e: &Env| {
                s["hooks"] = json!({
                    "createRuntime": hook(d.join(format!("{}-createRuntime", e.who))),
                    "poststart": hook(d.join(format!("{}-poststart", e.who))),
                });
            },
            script: "echo in-container",
            expect: &|t| has(t, "in-container"),
            normalise: &same,
        },
    );
    for who in ["runc", "ours"] {
        for h in ["createRuntime", "poststart"] {
            let f = dir.join(format!("{who}-{h}"));
            let got = std::fs::read_to_string(&f).unwrap_or_default();
            if got != "x\n" {
                missing.push(format!("{who}: {h} hook wrote {got:?} to {}", f.display()));
            }
        }
    }
    ctx.ensure(missing.is_empty(), || missing.join("\n"));
}

/// A network namespace given by path is joined.
fn conf_joined_netns(ctx: &Ctx) {
    if !process_only(ctx, "conf_joined_netns") {
        return;
    }
    // The helper runs on the reference shim.
    let helper = "nshelper";
    let out = ctx.ctr(&[
        "run",
        "-d",
        "--runtime",
        REFERENCE,
        "--fifo-dir",
        &ctx.daemon.fifo_dir.display().to_string(),
        IMAGE,
        helper,
        "sleep",
        "1000",
    ]);
    ctx.check(&out, "run the helper");
    let pid = ctx
        .wait_status(helper, "RUNNING", Duration::from_secs(20))
        .pid;
    let ns_path = format!("/proc/{pid}/ns/net");
    let want = std::fs::read_link(&ns_path)
        .expect("reading the helper's netns link")
        .display()
        .to_string();
    let want_line = format!("net={want}\n");
    let p = ns_path.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_row(
            ctx,
            &Row {
                name: "netns",
                mutate: &|s, _| {
                    for n in s["linux"]["namespaces"].as_array_mut().expect("namespaces") {
                        if n["type"] == "network" {
                            n["path"] = json!(p);
                        }
                    }
                },
                script: "echo net=$(readlink /proc/self/ns/net)",
                expect: &|t| has(t, &want_line),
                normalise: &same,
            },
        )
    }));
    ctx.kill_and_remove(helper);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A new user namespace with uid and gid mappings: root inside is an unprivileged uid outside.
/// Every other namespace is created after it, so it owns them (sysfs, mqueue and proc mount in
/// it). The host's files are not remapped, so inside they belong to the overflow uid, and root
/// inside cannot write where only the host's root may.
///
/// The mapped root must reach its rootfs: the harness's directories are private to the host's
/// root (0700), which the container's root is not, so this row's rootfs copy lives in a
/// directory of its own that others may traverse (the busybox files themselves are
/// world-readable).
fn conf_userns(ctx: &Ctx) {
    if !process_only(ctx, "conf_userns") {
        return;
    }
    const HOST_ID: u32 = 100_000;
    const SIZE: u32 = 65_536;
    let open = tempfile::Builder::new()
        .prefix("conf-userns-")
        .tempdir()
        .expect("creating the user namespace row's directory");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755))
            .expect("opening the row's directory to others");
    }
    let root = open.path().join("rootfs");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&ctx.daemon.image.rootfs)
        .arg(&root)
        .status()
        .expect("running cp");
    assert!(cp.success(), "copying the rootfs to {}", root.display());
    let map = json!([{ "containerID": 0, "hostID": HOST_ID, "size": SIZE }]);
    let want_map = format!("0 {HOST_ID} {SIZE}");
    run_row_in(
        ctx,
        &Row {
            name: "userns",
            mutate: &|s, _| {
                s["linux"]["namespaces"]
                    .as_array_mut()
                    .expect("namespaces")
                    .push(json!({ "type": "user" }));
                s["linux"]["uidMappings"] = map.clone();
                s["linux"]["gidMappings"] = map.clone();
            },
            script:
                "echo uid_map $(cat /proc/self/uid_map); echo gid_map $(cat /proc/self/gid_map); \
                     echo id=$(id -u):$(id -g); echo busybox=$(stat -c %u:%g /bin/busybox); \
                     touch /etc/userns-probe; echo touch=$?; \
                     echo sys=$(ls /sys/kernel >/dev/null && echo ok)",
            expect: &|t| {
                let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "65534".into());
                has_all(
                    t,
                    &[
                        &format!("uid_map {want_map}\n"),
                        &format!("gid_map {want_map}\n"),
                        "id=0:0\n",
                        &format!("busybox={overflow}:{overflow}\n"),
                        "Permission denied",
                        "touch=1\n",
                        "sys=ok\n",
                    ],
                )
            },
            normalise: &same,
        },
        &root,
    );
    // Only now: the runs are over and their rootfs is unmounted.
    drop(open);
}

/// [`run_row`] with the rootfs at `root`.
fn run_row_in(ctx: &Ctx, row: &Row, root: &std::path::Path) {
    let problems = row_problems_in(ctx, row, root);
    ctx.ensure(problems.is_empty(), || {
        format!("row {}:\n{}", row.name, problems.join("\n"))
    });
}
