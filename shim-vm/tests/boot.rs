//! Boots the real guest image in QEMU and talks to the agent over virtio-serial: Health, then
//! Shutdown, and QEMU must exit by itself. Prints boot-to-ready (QEMU exec → Health answered).
//!
//! Skipped, with the reason printed, when apt cannot fetch the kernel or QEMU cannot be had;
//! `SHIM_VM_BOOT_TEST=0` skips it on purpose. `SHIM_VM_BOOTS=N` boots N times and prints the
//! median; `SHIM_VM_CONSOLE=1` keeps the guest console in the run directory and prints it;
//! `SHIM_VM_KERNEL` / `SHIM_VM_INITRD` boot other images than the built ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shim_vm::agent::Agent;
use shim_vm::image::{self, BuildOptions};
use shim_vm::qemu::{self, Accel, Booted, VmConfig};
use shim_vm::Error;

fn skip(why: &str) {
    println!("SKIP boot test: {why}");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// QEMU from Debian when missing (tests run as root here, like CI).
fn ensure_qemu() -> Result<(), String> {
    if have_qemu() {
        return Ok(());
    }
    if !nix_is_root() {
        return Err("qemu-system-x86_64 is missing and we are not root to install it".into());
    }
    println!("installing qemu-system-x86 with apt");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))
    };
    let mut status = install()?;
    if !status.success() {
        // Stale package lists on a fresh machine: refresh once and retry.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        status = install()?;
    }
    if status.success() && have_qemu() {
        Ok(())
    } else {
        Err(format!("apt-get install qemu-system-x86 failed ({status})"))
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A static busybox for a container rootfs, when the host has one.
fn busybox() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if path.is_empty() {
        return None;
    }
    let ldd = Command::new("ldd").arg(&path).output().ok()?;
    (!ldd.status.success()).then(|| path.into())
}

/// `<share>/c1/rootfs` with busybox as /bin/sh: what the host shim will bind-mount there.
fn container_bundle(share: &Path, busybox: &Path) -> std::io::Result<()> {
    let rootfs = share.join("c1/rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("proc"))?;
    std::fs::create_dir_all(rootfs.join("dev"))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))
}

/// What the container run inside the VM measured.
struct ContainerRun {
    output: String,
    /// CreateContainer sent → first output line read.
    create_to_output: Duration,
    /// ExecProcess + WaitProcess of `sh -c true`, median.
    exec: Duration,
    /// MiB/s of a process's stdout read through the agent.
    stdout_mib_s: f64,
    /// MiB/s of a process's stdout through the output port.
    port_mib_s: f64,
    /// MiB/s inside the guest alone: `dd` of /dev/zero to /dev/null, and through a pipe (what
    /// any stdout costs before it leaves the guest).
    guest_null_mib_s: f64,
    guest_pipe_mib_s: f64,
}

fn rpc(what: &'static str) -> impl Fn(protos::ttrpc::Error) -> String {
    move |err| format!("{what}: {err}")
}

async fn read_until(
    agent: &Agent,
    stream: &str,
    mut done: impl FnMut(&[u8]) -> bool,
) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    loop {
        let mut r = protos::agent::ReadStreamRequest::new();
        r.stream_id = stream.into();
        r.max_bytes = 1 << 20;
        let resp = agent
            .client
            .read_stdout(Agent::ctx(Duration::from_secs(20)), &r)
            .await
            .map_err(rpc("ReadStdout"))?;
        out.extend(resp.data);
        if resp.eof || done(&out) {
            return Ok((out, resp.eof));
        }
    }
}

async fn exec(agent: &Agent, exec_id: &str, args: &[&str], stdout: &str) -> Result<u32, String> {
    use protos::agent::*;
    let t = Duration::from_secs(20);
    let mut req = ExecProcessRequest::new();
    req.container_id = "c1".into();
    req.exec_id = exec_id.into();
    req.process = serde_json::json!({
        "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"
    })
    .to_string()
    .into_bytes();
    let mut streams = StdioStreams::new();
    streams.stdout = stdout.into();
    req.stdio = protobuf::MessageField::some(streams);
    agent
        .client
        .exec_process(Agent::ctx(t), &req)
        .await
        .map_err(rpc("ExecProcess"))?;
    if !stdout.is_empty() {
        return Ok(0);
    }
    let mut w = WaitProcessRequest::new();
    w.container_id = "c1".into();
    w.exec_id = exec_id.into();
    Ok(agent
        .client
        .wait_process(Agent::ctx(t), &w)
        .await
        .map_err(rpc("WaitProcess"))?
        .exit_status)
}

/// Runs a busybox container from the 9p share inside the VM, through the agent: its output
/// (`uname -r` in it), exec latency, and stdout throughput.
async fn run_container(agent: &Agent, output: &Path) -> Result<ContainerRun, String> {
    use protos::agent::*;
    let t = Duration::from_secs(20);
    let start = Instant::now();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "echo kernel $(busybox uname -r); read x; exit 0"],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    let mut create = CreateContainerRequest::new();
    create.container_id = "c1".into();
    create.bundle = format!("{}/c1", vm_channel::GUEST_SHARE_DIR);
    create.spec = spec.to_string().into_bytes();
    let mut streams = StdioStreams::new();
    streams.stdin = "c1-in".into();
    streams.stdout = "c1-out".into();
    create.stdio = protobuf::MessageField::some(streams);
    agent
        .client
        .create_container(Agent::ctx(t), &create)
        .await
        .map_err(rpc("CreateContainer"))?;
    let mut req = StartContainerRequest::new();
    req.container_id = "c1".into();
    agent
        .client
        .start_container(Agent::ctx(t), &req)
        .await
        .map_err(rpc("StartContainer"))?;
    let (line, _) = read_until(agent, "c1-out", |b| b.contains(&b'\n')).await?;
    let create_to_output = start.elapsed();

    let mut execs = Vec::new();
    for i in 0..5 {
        let t0 = Instant::now();
        let status = exec(agent, &format!("true{i}"), &["/bin/sh", "-c", "true"], "").await?;
        execs.push(t0.elapsed());
        if status != 0 {
            return Err(format!("exec true exited {status}"));
        }
    }
    execs.sort();

    // cgroups inside the guest: metrics, freeze and thaw of the running container.
    let mut stats = StatsContainerRequest::new();
    stats.container_id = "c1".into();
    let any = agent
        .client
        .stats_container(Agent::ctx(t), &stats)
        .await
        .map_err(rpc("StatsContainer"))?
        .stats;
    if any.type_url != "io.containerd.cgroups.v2.Metrics" {
        return Err(format!("stats: unexpected {:?}", any.type_url));
    }
    let mut pause = PauseContainerRequest::new();
    pause.container_id = "c1".into();
    agent
        .client
        .pause_container(Agent::ctx(t), &pause)
        .await
        .map_err(rpc("PauseContainer"))?;
    let mut resume = ResumeContainerRequest::new();
    resume.container_id = "c1".into();
    agent
        .client
        .resume_container(Agent::ctx(t), &resume)
        .await
        .map_err(rpc("ResumeContainer"))?;

    const MIB: usize = 32;
    let count = format!("count={MIB}");
    exec(
        agent,
        "dd",
        &["/bin/busybox", "dd", "if=/dev/zero", "bs=1048576", &count],
        "dd-out",
    )
    .await?;
    let t0 = Instant::now();
    let (data, eof) = read_until(agent, "dd-out", |_| false).await?;
    let secs = t0.elapsed().as_secs_f64();
    if !eof || data.len() != MIB << 20 {
        let mut w = WaitProcessRequest::new();
        w.container_id = "c1".into();
        w.exec_id = "dd".into();
        let status = agent.client.wait_process(Agent::ctx(t), &w).await;
        return Err(format!("dd: read {} bytes; {status:?}", data.len()));
    }

    let port_mib_s = port_throughput(agent, output).await?;
    let dd = "/bin/busybox dd if=/dev/zero bs=1048576 count=256";
    let guest_null_mib_s = guest_rate(agent, "null", &format!("{dd} of=/dev/null")).await?;
    let guest_pipe_mib_s = guest_rate(
        agent,
        "pipe",
        &format!("{dd} | /bin/busybox dd of=/dev/null bs=1048576"),
    )
    .await?;

    let mut close = CloseStdinRequest::new();
    close.stream_id = "c1-in".into();
    agent
        .client
        .close_stdin(Agent::ctx(t), &close)
        .await
        .map_err(rpc("CloseStdin"))?;
    let mut w = WaitProcessRequest::new();
    w.container_id = "c1".into();
    let status = agent
        .client
        .wait_process(Agent::ctx(t), &w)
        .await
        .map_err(rpc("WaitProcess"))?
        .exit_status;
    if status != 0 {
        return Err(format!("the container exited {status}"));
    }
    let mut rm = RemoveContainerRequest::new();
    rm.container_id = "c1".into();
    agent
        .client
        .remove_container(Agent::ctx(t), &rm)
        .await
        .map_err(rpc("RemoveContainer"))?;
    Ok(ContainerRun {
        output: String::from_utf8_lossy(&line).into_owned(),
        create_to_output,
        exec: execs[execs.len() / 2],
        stdout_mib_s: MIB as f64 / secs,
        port_mib_s,
        guest_null_mib_s,
        guest_pipe_mib_s,
    })
}

/// MiB/s of a 256 MiB shell pipeline run in the guest (exec and wait included).
async fn guest_rate(agent: &Agent, name: &str, script: &str) -> Result<f64, String> {
    let t0 = Instant::now();
    let status = exec(
        agent,
        &format!("rate-{name}"),
        &["/bin/sh", "-c", script],
        "",
    )
    .await?;
    if status != 0 {
        return Err(format!("{script}: exit {status}"));
    }
    Ok(256.0 / t0.elapsed().as_secs_f64())
}

/// `dd` of zeros to stdout through the output port (the shim's path), counted on a host pipe.
async fn port_throughput(agent: &Agent, output: &Path) -> Result<f64, String> {
    use std::os::fd::AsRawFd;
    const MIB: usize = 128;
    let link =
        shim_vm::output::OutputLink::connect(output, Instant::now() + Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
    let (r, w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    // SAFETY: fcntl on a descriptor we own; the AsyncFd owns it afterwards.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let w = unsafe { tokio::io::unix::AsyncFd::register(w) }.map_err(|e| e.to_string())?;
    let counter = std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let mut ch = link.open(std::sync::Arc::new(w));
    let t0 = Instant::now();
    let count = format!("count={MIB}");
    let args = ["/bin/busybox", "dd", "if=/dev/zero", "bs=1048576", &count];
    let mut req = protos::agent::ExecProcessRequest::new();
    req.container_id = "c1".into();
    req.exec_id = "dd-port".into();
    req.process = serde_json::json!({
        "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"
    })
    .to_string()
    .into_bytes();
    let mut streams = protos::agent::StdioStreams::new();
    streams.stdout_channel = ch.channel;
    req.stdio = protobuf::MessageField::some(streams);
    if let Err(e) = agent
        .client
        .exec_process(Agent::ctx(Duration::from_secs(20)), &req)
        .await
    {
        let h = agent.health(Duration::from_secs(5)).await;
        return Err(format!("ExecProcess: {e}; health after: {h:?}"));
    }
    tokio::time::timeout(Duration::from_secs(60), ch.done())
        .await
        .map_err(|_| "the output port's channel did not end".to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    drop(ch);
    let total = counter.join().map_err(|_| "counter thread".to_string())?;
    if total != MIB << 20 {
        return Err(format!(
            "output port: {total} bytes, expected {}",
            MIB << 20
        ));
    }
    Ok(MIB as f64 / secs)
}

struct Boot {
    accel: Accel,
    container: Option<ContainerRun>,
    ready: Duration,
    guest_uptime_ms: u64,
    init_started_ms: u64,
    serving_ms: u64,
    kernel_release: String,
    exit_after_shutdown: Duration,
}

fn boot_once(
    img: &image::GuestImage,
    console: bool,
    busybox: Option<&Path>,
) -> Result<Boot, String> {
    let run = tempfile::Builder::new()
        .prefix("shim-vm-boot")
        .tempdir()
        .map_err(|e| e.to_string())?;
    // Any other kernel or initramfs can be tried in place of the built ones.
    let pick = |var: &str, built: &Path| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| built.to_path_buf())
    };
    let mut cfg = VmConfig::new(
        pick("SHIM_VM_KERNEL", &img.kernel),
        pick("SHIM_VM_INITRD", &img.initrd),
        run.path().to_path_buf(),
    );
    if console {
        cfg.console_log = Some(run.path().join("console.log"));
        cfg.extra_cmdline.push("agent.debug".into());
    }
    if let Some(busybox) = busybox {
        let share = run.path().join("share");
        container_bundle(&share, busybox).map_err(|e| format!("container bundle: {e}"))?;
        cfg.share = Some(share);
    }
    let console_log =
        || std::fs::read_to_string(run.path().join("console.log")).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cache = workspace().join("target/guest");
    // The VM is a child of the test's own reaper, as it is of the shim's.
    let reaper = rt
        .block_on(async { shim_common::reaper::Reaper::start() })
        .map_err(|e| e.to_string())?;
    let Booted { vm, agent, accel } = rt
        .block_on(qemu::boot(
            &cfg,
            &reaper,
            Some(&cache),
            Duration::from_secs(30),
        ))
        .map_err(|e| format!("booting: {e}\nconsole:\n{}", console_log()))?;
    let started = vm.started;
    let result = rt.block_on(async {
        let health = agent
            .health(Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let ready = started.elapsed();
        if health.protocol_version != protos::AGENT_PROTOCOL_VERSION {
            return Err(format!(
                "agent speaks protocol {}, we speak {}",
                health.protocol_version,
                protos::AGENT_PROTOCOL_VERSION
            ));
        }
        let container = match busybox {
            Some(_) => Some(run_container(&agent, &vm.output_socket()).await?),
            None => None,
        };
        // The host goes away and comes back: the agent must serve the new connection (the
        // port gave it EOF, and the handshake drops whatever was in flight).
        drop(agent);
        let agent = Agent::connect(&vm.agent_socket(), Instant::now() + Duration::from_secs(10))
            .await
            .map_err(|e| format!("reconnecting: {e}"))?;
        agent
            .health(Duration::from_secs(5))
            .await
            .map_err(|e| format!("Health after reconnecting: {e}"))?;
        let t = Instant::now();
        agent
            .shutdown(Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        Ok((ready, health, t, container))
    });
    let (ready, health, shutdown_at, container) = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(format!(
                "{e}\nqemu log:\n{}\nconsole:\n{}",
                vm.log(),
                console_log()
            ));
        }
    };
    let status = rt
        .block_on(vm.wait_timeout(Duration::from_secs(10)))
        .ok_or_else(|| "QEMU did not exit after Shutdown".to_string())?;
    let exit_after_shutdown = shutdown_at.elapsed();
    if console {
        println!(
            "--- guest console ---\n{}",
            std::fs::read_to_string(run.path().join("console.log")).unwrap_or_default()
        );
    }
    if status != 0 {
        return Err(format!("QEMU exited with status {status}: {}", vm.log()));
    }
    Ok(Boot {
        accel,
        container,
        ready,
        guest_uptime_ms: health.uptime_ms,
        init_started_ms: health.init_started_ms,
        serving_ms: health.serving_ms,
        kernel_release: health.kernel_release,
        exit_after_shutdown,
    })
}

#[test]
fn boots_answers_health_and_powers_off() {
    if std::env::var("SHIM_VM_BOOT_TEST").as_deref() == Ok("0") {
        return skip("SHIM_VM_BOOT_TEST=0");
    }
    if !cfg!(target_arch = "x86_64") {
        return skip("the guest image is x86_64");
    }
    let opts = BuildOptions::new(workspace());
    let t = Instant::now();
    let img = match image::build(&opts, &mut |m| println!("image: {m}")) {
        Ok(img) => img,
        Err(Error::Unavailable(why)) => {
            return skip(&format!("cannot fetch the guest kernel: {why}"))
        }
        Err(e) => panic!("building the guest image: {e}"),
    };
    println!(
        "image: {} + {} ({}; modules {}) in {:.1?}",
        img.kernel.display(),
        img.initrd.display(),
        img.kernel_release,
        img.modules.join(","),
        t.elapsed()
    );
    if let Err(why) = ensure_qemu() {
        return skip(&why);
    }
    let choice = qemu::choose_accel();
    println!("accelerator: {} ({})", choice.accel.as_str(), choice.reason);
    let console = std::env::var("SHIM_VM_CONSOLE").as_deref() == Ok("1");
    let boots: usize = std::env::var("SHIM_VM_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let busybox = busybox();
    if busybox.is_none() {
        println!("SKIP container in the VM: no static busybox on PATH");
    }
    let mut times = Vec::new();
    for i in 0..boots {
        // The first boot also runs a container from a 9p share; the others measure boot only.
        let bb = if i == 0 { busybox.as_deref() } else { None };
        let boot = boot_once(&img, console, bb).unwrap_or_else(|e| panic!("boot {i}: {e}"));
        let accel = boot.accel;
        assert_eq!(boot.kernel_release, img.kernel_release);
        if let Some(c) = &boot.container {
            println!(
                "container in the VM printed {:?}; CreateContainer to first output {:.0} ms, \
                 exec (create+wait of `sh -c true`) median {:.0} ms, stdout {:.0} MiB/s \
                 (ReadStdout), {:.0} MiB/s (output port); in the guest alone: dd to /dev/null \
                 {:.0} MiB/s, through a pipe {:.0} MiB/s",
                c.output.trim(),
                c.create_to_output.as_secs_f64() * 1000.0,
                c.exec.as_secs_f64() * 1000.0,
                c.stdout_mib_s,
                c.port_mib_s,
                c.guest_null_mib_s,
                c.guest_pipe_mib_s
            );
            // The container sees the guest's kernel, not the host's.
            assert_eq!(c.output.trim(), format!("kernel {}", img.kernel_release));
        }
        println!(
            "boot {i}: boot-to-ready {:.3} s ({}; guest clock: /init at {} ms, serving at {} ms, \
             answered at {} ms), QEMU exited {:.0} ms after Shutdown",
            boot.ready.as_secs_f64(),
            accel.as_str(),
            boot.init_started_ms,
            boot.serving_ms,
            boot.guest_uptime_ms,
            boot.exit_after_shutdown.as_secs_f64() * 1000.0
        );
        times.push(boot.ready);
    }
    times.sort();
    println!(
        "boot-to-ready over {} boot(s): median {:.3} s, min {:.3} s, max {:.3} s",
        times.len(),
        times[times.len() / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
}

/// The image builder's VM template (issue 5): it exists once QEMU is there, the default
/// settings match it, and a VM restored from it answers, takes SyncGuest, runs a container from
/// a 9p share mounted only now, and powers off cleanly. Prints restore-to-ready.
#[test]
fn restores_from_the_template() {
    if std::env::var("SHIM_VM_BOOT_TEST").as_deref() == Ok("0") {
        return skip("SHIM_VM_BOOT_TEST=0");
    }
    if !cfg!(target_arch = "x86_64") {
        return skip("the guest image is x86_64");
    }
    if let Err(why) = ensure_qemu() {
        return skip(&why);
    }
    let opts = BuildOptions::new(workspace());
    let img = match image::build(&opts, &mut |m| println!("image: {m}")) {
        Ok(img) => img,
        Err(Error::Unavailable(why)) => {
            return skip(&format!("cannot fetch the guest kernel: {why}"))
        }
        Err(e) => panic!("building the guest image: {e}"),
    };
    let Some(dir) = &img.template else {
        panic!("QEMU is here, but the image builder made no VM template");
    };
    let template = shim_vm::template::Template::load(&opts.cache_dir)
        .expect("reading the template")
        .expect("the template link");
    assert_eq!(&template.dir, dir);
    let accel = qemu::choose_accel().accel;
    if accel.as_str() != template.manifest.accel {
        return skip("the template was made under another accelerator");
    }
    let run = tempfile::Builder::new()
        .prefix("shim-vm-restore")
        .tempdir()
        .expect("a run directory");
    let share = run.path().join("share");
    let busybox = busybox();
    match &busybox {
        Some(bb) => container_bundle(&share, bb).expect("container bundle"),
        None => std::fs::create_dir_all(&share).expect("the share"),
    }
    let mut cfg = shim_vm::settings::VmSettings::default().vm_config(
        img.kernel.clone(),
        img.initrd.clone(),
        run.path().to_path_buf(),
        share,
    );
    cfg.accel = accel;
    if accel == Accel::Tcg {
        cfg.tsc_khz = qemu::host_tsc_khz();
    }
    assert_eq!(template.mismatch(&cfg), None, "the default settings");
    let cfg = template.restore_config(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let reaper = rt
        .block_on(async { shim_common::reaper::Reaper::start() })
        .expect("a reaper");
    let Booted { vm, agent, .. } = rt
        .block_on(shim_vm::template::restore(
            &cfg,
            &reaper,
            Duration::from_secs(30),
        ))
        .unwrap_or_else(|e| panic!("restoring: {e}"));
    let ready = vm.started.elapsed();
    rt.block_on(async {
        agent
            .sync_guest(Duration::from_secs(5))
            .await
            .expect("SyncGuest");
        let health = agent.health(Duration::from_secs(5)).await.expect("Health");
        assert_eq!(health.kernel_release, img.kernel_release);
        println!(
            "restored from {} in {:.0} ms (guest uptime {} ms: the template's boot)",
            dir.display(),
            ready.as_secs_f64() * 1000.0,
            health.uptime_ms
        );
        if busybox.is_some() {
            // Also the output port, whose agent side waited in the template for a host.
            let c = run_container(&agent, &vm.output_socket())
                .await
                .expect("a container in the VM");
            assert_eq!(c.output.trim(), format!("kernel {}", img.kernel_release));
            println!(
                "restored VM: stdout {:.0} MiB/s through the output port",
                c.port_mib_s
            );
        }
        agent
            .shutdown(Duration::from_secs(5))
            .await
            .expect("Shutdown");
    });
    let status = rt
        .block_on(vm.wait_timeout(Duration::from_secs(10)))
        .expect("QEMU exits after Shutdown");
    assert_eq!(status, 0, "{}", vm.log());
}
