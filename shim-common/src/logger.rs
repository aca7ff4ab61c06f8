//! The daemon's log: lines on the bundle's `log` fifo, which containerd copies into its own log.
//!
//! The fifo is held `O_RDWR | O_NONBLOCK`: the shim never blocks on it and never gets EPIPE
//! while containerd restarts (it reopens its end); a line that does not fit is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

struct FifoLogger {
    out: Mutex<File>,
    level: log::LevelFilter,
}

impl log::Log for FifoLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let msg = r.args().to_string().replace('"', "\\\"");
        let line = format!(
            "level={level} msg=\"{msg}\" runtime=shim pid={}\n",
            std::process::id()
        );
        if let Ok(mut f) = self.out.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Sends the log to `path` (the bundle's fifo, or any file); falls back to stderr.
pub fn init(path: &Path, debug: bool) {
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .or_else(|_| File::options().write(true).open("/dev/stderr"));
    let Ok(out) = out else { return };
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let logger = FifoLogger {
        out: Mutex::new(out),
        level,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
