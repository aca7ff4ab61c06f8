//! `vm-agent`: PID 1 of the VM shim's micro-VM.
//!
//! As PID 1 (`/init` of the initramfs) it mounts the pseudo filesystems, loads the kernel
//! modules the image builder listed, finds its virtio-serial port by name and serves the
//! `shimvm.agent.v1.Agent` ttrpc service on it, re-opening the conversation each time the host
//! reconnects. Containers are created with the `container` library, as the process shim does
//! on a host, except that the setup process of each container and exec is a fork of the agent
//! (it runs one thread) rather than a re-exec of this binary in setup mode, which stays the
//! fallback should the agent ever have more threads.
//!
//! Outside a VM (for tests) `vm-agent --listen unix:PATH` serves the same service on a unix
//! socket, with the same handshake, and Shutdown just exits; `PATH.output` stands in for the
//! output port.

mod boot;
mod output;
mod port;
mod reaper;
mod service;
mod stdio;

use std::path::PathBuf;
use std::sync::Arc;

/// The argument that puts this binary in container-setup mode (see the container crate).
pub const SETUP_ARG: &str = "__container_setup";

/// Where the agent is listening.
enum Mode {
    /// PID 1 in the guest: boot, then serve the virtio-serial port.
    Guest,
    /// A unix socket path, for tests on a host.
    Listen(PathBuf),
}

struct StderrLogger {
    debug: bool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.debug || m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "[{:>10.4}] vm-agent {}: {}",
                boot::uptime().as_secs_f64(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(SETUP_ARG) {
        container::init::main();
    }
    let _ = boot::INIT_STARTED.set(boot::uptime());
    let mode = if std::process::id() == 1 {
        Mode::Guest
    } else {
        match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--listen"), Some(addr)) => {
                Mode::Listen(PathBuf::from(addr.strip_prefix("unix:").unwrap_or(addr)))
            }
            _ => {
                eprintln!(
                    "vm-agent is the init of the VM shim's guest; outside a VM run \
                     `vm-agent --listen unix:PATH`"
                );
                std::process::exit(2);
            }
        }
    };
    if matches!(mode, Mode::Guest) {
        boot::early_mounts();
    }
    let cmdline = boot::Cmdline::read();
    let logger = Box::leak(Box::new(StderrLogger {
        debug: cmdline.debug,
    }));
    let _ = log::set_logger(logger);
    log::set_max_level(log::LevelFilter::Debug);

    let guest = matches!(mode, Mode::Guest);
    if guest {
        boot::init_system();
    } else {
        // Orphaned container processes must come back to us to be reaped, as they do to PID 1.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }

    // One thread: the guest has one vCPU by default, and every cross-thread wake-up is a
    // futex and a context switch, which TCG makes expensive. Nothing in the agent blocks for
    // long (container setup runs in its own process). It also lets the container library
    // fork the agent for each setup process instead of re-executing it (see `Launcher`).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // A blocking-pool thread (mounting the shares) ends as soon as its work is done,
        // instead of idling for tokio's default 10 s: while it lives the agent is not
        // single-threaded, and each container and exec meanwhile falls back to re-executing
        // the agent for its setup process (measured: an exec's ~25 ms in the agent became
        // ~75 ms when it came within 10 s of a Create).
        .thread_keep_alive(std::time::Duration::ZERO)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("starting the runtime: {e}");
            boot::fatal();
        }
    };
    let result = rt.block_on(async move {
        let reaper = reaper::Reaper::start();
        let link = output::OutputLink::new();
        let agent = Arc::new(service::Agent::new(
            reaper,
            guest,
            cmdline.shares.clone(),
            link.clone(),
        ));
        match mode {
            // Powers off after Shutdown; returns only on failure.
            Mode::Guest => port::serve_guest(agent, &cmdline.port, link).await,
            Mode::Listen(path) => port::serve_unix(agent, &path, link).await,
        }
    });
    match result {
        Ok(()) if !guest => std::process::exit(0),
        Ok(()) => boot::power_off(),
        Err(e) => {
            log::error!("serving: {e}");
            boot::fatal()
        }
    }
}
