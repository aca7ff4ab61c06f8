//! The shim binary's life: `start` (spawn the daemon, print its address), `delete` (clean up
//! after a dead daemon), the serving daemon itself, `-info` and `-v`.
//!
//! `start` and `delete` stay single-threaded and tokio-free: `start` forks the daemon, and a
//! fork from a single-threaded process needs no care. Only the daemon runs an async runtime, and
//! it is created after every process-wide setting (subreaper, environment) is in place.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};
use protos::introspection::{RuntimeInfo, RuntimeVersion};
use protos::shim::DeleteResponse;

use crate::bootstrap::Handshake;
use crate::bundle::Bundle;
use crate::cli::{Action, Args};
use crate::error::{Error, Result};
use crate::events::{timestamp, Publisher};
use crate::reaper::Reaper;
use crate::runtime::{Runtime, RuntimeContext};
use crate::service::TaskService;
use crate::{id, logger, mount, socket};

const LISTEN_FD_ENV: &str = "SHIM_LISTEN_FD";
const READY_FD_ENV: &str = "SHIM_READY_FD";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the shim binary for runtime `R`; never returns.
pub fn run<R: Runtime>(version: &str) -> ! {
    let args = match Args::from_env(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let result = match args.action {
        Action::Version => {
            println!("containerd-shim-{}-v1:\n  Version: {version}", R::NAME);
            Ok(())
        }
        Action::Info => info::<R>(version),
        Action::Start => start(&args),
        Action::Delete => delete::<R>(&args),
        Action::Serve => serve::<R>(&args),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("containerd-shim-{}-v1: {e}", R::NAME);
            std::process::exit(1);
        }
    }
}

fn bundle_of(args: &Args) -> Result<Bundle> {
    if !args.bundle.is_empty() {
        return Ok(Bundle::new(&args.bundle));
    }
    std::env::current_dir()
        .map(Bundle::new)
        .map_err(|e| Error::io("finding the bundle (the working directory)", e))
}

fn check_identity(args: &Args) -> Result<()> {
    if args.namespace.is_empty() {
        return Err(Error::InvalidArgument(
            "shim namespace cannot be empty".into(),
        ));
    }
    id::validate("namespace", &args.namespace)?;
    id::validate("container id", &args.id)
}

/// Moves `fd` above the range the daemon's fixed fds use, close-on-exec.
fn high_fd(fd: RawFd) -> Result<OwnedFd> {
    let dup = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| Error::sys("duplicating fd", e))?;
    // SAFETY: fcntl just returned this new descriptor; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

fn start(args: &Args) -> Result<()> {
    check_identity(args)?;
    let bundle = bundle_of(args)?;
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let handshake = Handshake::detect(
        &stdin,
        args,
        std::env::var("MAX_SHIM_VERSION").ok().as_deref(),
    );
    // A malformed spec is Create's to report, with the right code; here it only means "no group".
    let group = bundle
        .spec()
        .ok()
        .and_then(|s| s.group().map(str::to_string));
    if let Some(g) = &group {
        id::validate("group", g)?;
    }
    let path = socket::socket_path(
        &bundle,
        &args.address,
        &args.namespace,
        &args.id,
        group.as_deref(),
        handshake.socket_dir(),
    );
    let address = socket::address(&path);
    // A group's shim is already running: this container joins it.
    if let Some(pid) = socket::server_pid(&path) {
        bundle.write_file("address", address.as_bytes())?;
        bundle.write_file("shim.pid", pid.to_string().as_bytes())?;
        return reply(&handshake, &address);
    }
    let pid = spawn_daemon(args, &bundle, &path, handshake.ttrpc_address())?;
    bundle.write_file("address", address.as_bytes())?;
    bundle.write_file("shim.pid", pid.to_string().as_bytes())?;
    adjust_oom_score(pid);
    reply(&handshake, &address)
}

fn reply(handshake: &Handshake, address: &str) -> Result<()> {
    let mut out = std::io::stdout();
    out.write_all(&handshake.reply(address))
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the start reply", e))
}

/// Binds the socket, re-executes this binary as the daemon (new session, no inherited stdio,
/// the listener as fd 3 and a readiness pipe as fd 4) and waits until it serves.
fn spawn_daemon(
    args: &Args,
    bundle: &Bundle,
    path: &std::path::Path,
    ttrpc_address: Option<&str>,
) -> Result<u32> {
    let listener = socket::bind(path)?;
    let listen = high_fd(listener.as_raw_fd())?;
    drop(listener);
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("creating readiness pipe", e))?;
    let ready_w = high_fd(ready_w.as_raw_fd())?;

    let exe = std::env::current_exe().map_err(|e| Error::io("locating own binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ]);
    if !args.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &args.publish_binary]);
    }
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.args(["-socket", &path.to_string_lossy()]);
    if let Some(addr) = ttrpc_address {
        cmd.env("TTRPC_ADDRESS", addr);
    }
    cmd.current_dir(bundle.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env(LISTEN_FD_ENV, "3")
        .env(READY_FD_ENV, "4");
    let (lfd, rfd) = (listen.as_raw_fd(), ready_w.as_raw_fd());
    // SAFETY: setsid and dup2 are async-signal-safe; nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(lfd, 3) < 0 || libc::dup2(rfd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("spawning the shim daemon", e))?;
    drop(ready_w);
    drop(listen);
    let pid = child.id();
    wait_ready(ready_r).inspect_err(|_| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_file(path);
    })?;
    Ok(pid)
}

fn wait_ready(ready: OwnedFd) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, READY_TIMEOUT.as_millis() as i32) };
    if n <= 0 {
        return Err(Error::Other(
            "the shim daemon did not start serving in time".into(),
        ));
    }
    let mut byte = [0u8; 1];
    let mut f = std::fs::File::from(ready);
    match f.read(&mut byte) {
        Ok(1) => Ok(()),
        _ => Err(Error::Other(
            "the shim daemon exited before serving (see the shim log)".into(),
        )),
    }
}

/// containerd's own score + 1, so the OOM killer takes a shim before containerd.
fn adjust_oom_score(pid: u32) {
    let parent = nix::unistd::getppid();
    let Ok(s) = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj")) else {
        return;
    };
    let Ok(score) = s.trim().parse::<i32>() else {
        return;
    };
    let _ = std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (score + 1).min(1000).to_string(),
    );
}

fn delete<R: Runtime>(args: &Args) -> Result<()> {
    check_identity(args)?;
    let bundle = bundle_of(args)?;
    let pid = match R::cleanup(&bundle, &args.id, &args.namespace) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("cleaning up container {}: {e}", args.id);
            None
        }
    };
    mount::unmount_all(&bundle.rootfs())?;
    let group = bundle
        .spec()
        .ok()
        .and_then(|s| s.group().map(str::to_string));
    let path = socket::socket_path(
        &bundle,
        &args.address,
        &args.namespace,
        &args.id,
        group.as_deref(),
        None,
    );
    if !path.starts_with(bundle.path()) && !socket::is_serving(&path) {
        let _ = std::fs::remove_file(&path);
    }
    let mut resp = DeleteResponse::new();
    resp.pid = pid.unwrap_or(0);
    resp.exit_status = 128 + libc::SIGKILL as u32;
    resp.exited_at = MessageField::some(timestamp(SystemTime::now()));
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| Error::Other(format!("encoding DeleteResponse: {e}")))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| Error::io("writing DeleteResponse", e))
}

fn info<R: Runtime>(version: &str) -> Result<()> {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let mut info = RuntimeInfo::new();
    info.name = format!("io.containerd.{}.v1", R::NAME);
    let mut v = RuntimeVersion::new();
    v.version = version.to_string();
    info.version = MessageField::some(v);
    if let Ok(any) = Any::parse_from_bytes(&stdin) {
        if !any.type_url.is_empty() {
            let mut o = Any::new();
            o.type_url = any.type_url;
            info.options = MessageField::some(o);
        }
    }
    if let Some(features) = R::features() {
        let mut f = Any::new();
        f.type_url = protos::type_urls::OCI_FEATURES.to_string();
        f.value = features;
        info.features = MessageField::some(f);
    }
    let bytes = info
        .write_to_bytes()
        .map_err(|e| Error::Other(format!("encoding RuntimeInfo: {e}")))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| Error::io("writing RuntimeInfo", e))
}

fn inherited_fd(name: &str) -> Result<OwnedFd> {
    let fd: RawFd = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the daemon is started by `start`, not by hand ({name} is not set)"
            ))
        })?;
    // SAFETY: `start` placed this descriptor at this number for us alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Error::sys("marking inherited fd close-on-exec", e))?;
    Ok(owned)
}

fn serve<R: Runtime>(args: &Args) -> Result<()> {
    check_identity(args)?;
    let listen = inherited_fd(LISTEN_FD_ENV)?;
    // SO_PEERCRED names whoever last called listen(2) on the socket: `start`, which has exited.
    // Listening again here makes it name the daemon (`start` of a grouped container reads it
    // to write shim.pid).
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(listen.as_raw_fd(), libc::SOMAXCONN) } != 0 {
        return Err(Error::io(
            "listening on the inherited socket",
            std::io::Error::last_os_error(),
        ));
    }
    let ready = inherited_fd(READY_FD_ENV)?;
    // Still single-threaded: the environment may change safely, and children must not see these.
    std::env::remove_var(LISTEN_FD_ENV);
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Error::io(
            "becoming a child subreaper",
            std::io::Error::last_os_error(),
        ));
    }
    let bundle = bundle_of(args)?;
    logger::init(&bundle.file("log"), args.debug);
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let socket_path = PathBuf::from(&args.socket);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("building the async runtime", e))?;
    let result = rt.block_on(async {
        let reaper = Reaper::start()?;
        let runtime = Arc::new(R::new(RuntimeContext {
            namespace: args.namespace.clone(),
            reaper,
            debug: args.debug,
            socket: socket_path.clone(),
        })?);
        let publisher = Publisher::start(ttrpc_address, args.namespace.clone());
        let service = TaskService::new(runtime, publisher.clone(), args.namespace.clone());
        let services = protos::create_task_v2_and_v3(service.clone());
        // SAFETY: the listener fd is ours alone and handed over whole.
        let server =
            unsafe { ttrpc::r#async::Server::new().add_unix_listener(listen.into_raw_fd()) }
                .map_err(|e| Error::Other(format!("serving ttrpc: {e}")))?;
        let mut server = server.register_service(services);
        server
            .start()
            .await
            .map_err(|e| Error::Other(format!("starting ttrpc server: {e}")))?;
        let _ = nix::unistd::write(&ready, b"1");
        drop(ready);
        log::info!("serving {} for {}/{}", args.socket, args.namespace, args.id);

        let shutdown = service.shutdown_requested();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::io("watching SIGTERM", e))?;
        tokio::select! {
            _ = shutdown.notified() => log::info!("shutdown requested"),
            _ = term.recv() => log::info!("terminated"),
        }
        publisher.flush(Duration::from_secs(3)).await;
        Ok::<_, Error>(())
    });
    if !args.socket.is_empty() {
        let _ = std::fs::remove_file(&socket_path);
    }
    result
}
