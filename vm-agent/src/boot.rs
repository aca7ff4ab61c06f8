//! What the guest's init does before serving: mounts, kernel modules, and at the end powering
//! off. There is no udev, no modprobe and no other init in the guest: all of it is here.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::mount::{mount, MsFlags};

/// Settings read from the kernel command line (`agent.port=NAME`, `agent.debug`), so the host
/// can change them per VM without rebuilding the image.
pub struct Cmdline {
    pub port: String,
    pub debug: bool,
    /// 9p tags to mount at boot (`agent.share=TAG`, repeatable).
    pub shares: Vec<String>,
}

impl Cmdline {
    pub fn read() -> Cmdline {
        let text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
        Self::parse(if std::process::id() == 1 { &text } else { "" })
    }

    fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline {
            port: vm_channel::PORT_NAME.to_string(),
            debug: false,
            shares: Vec::new(),
        };
        for word in text.split_whitespace() {
            if let Some(p) = word.strip_prefix("agent.port=") {
                c.port = p.to_string();
            } else if let Some(tag) = word.strip_prefix("agent.share=") {
                c.shares.push(tag.to_string());
            } else if word == "agent.debug" || word == "agent.debug=1" {
                c.debug = true;
            }
        }
        c
    }
}

/// Guest uptime when the agent started and when it began serving, for Health.
pub static INIT_STARTED: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
pub static SERVING: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// CLOCK_BOOTTIME: time since the guest kernel started, for the log and Health.
pub fn uptime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = fs::create_dir_all(target);
    if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
        // EBUSY: already there (devtmpfs can be automounted by a kernel that has that option).
        if e != nix::errno::Errno::EBUSY {
            log::warn!("mounting {fstype} on {target}: {e}");
        }
    }
}

/// Mounts what the agent and the container library need (`/proc` first: the command line is
/// read from it).
pub fn early_mounts() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    mount_fs("proc", "/proc", "proc", nodev, None);
    mount_fs("sysfs", "/sys", "sysfs", nodev, None);
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    );
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nodev, None);
    // The container library keeps each container in a cgroup of its own, inside the guest.
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None);
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
}

/// Loads the modules. The host's shares are not mounted here but at first use
/// ([`mount_share`] from the service): a VM template is saved right after boot, and a mounted
/// 9p export blocks QEMU's migration; a share is also per-VM state the template must not hold.
pub fn init_system() {
    let loaded = load_modules(Path::new("/lib/modules"));
    log::info!("{loaded} modules loaded");
}

/// Mounts the 9p share `tag` (`/mnt/<tag>`; the VM's one share is `/mnt/share`). The device is
/// probed when 9pnet_virtio loads, but give it a moment rather than fail on a race. Blocking
/// (a mount and short sleeps): callers run it off the agent's one async thread.
pub fn mount_share(tag: &str) -> Result<(), String> {
    let target = Path::new("/mnt").join(tag);
    let _ = fs::create_dir_all(&target);
    // 512 KiB messages: the measured sweet spot for reads and writes (vm-guest.md §3.1).
    let opts = "trans=virtio,version=9p2000.L,msize=524288";
    let mut last = None;
    for _ in 0..100 {
        match mount(Some(tag), &target, Some("9p"), MsFlags::empty(), Some(opts)) {
            Ok(()) => {
                log::info!("share {tag} mounted on {}", target.display());
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!(
        "mounting the 9p share {tag}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// `finit_module` for each file named in `<dir>/order`, in that order. A module that fails is
/// logged and skipped: the agent can still answer (and report) without 9p, say.
fn load_modules(dir: &Path) -> usize {
    let order = fs::read_to_string(dir.join("order")).unwrap_or_default();
    let empty = CString::default();
    let mut loaded = 0;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("module {name}: {e}");
                continue;
            }
        };
        // SAFETY: finit_module with an open fd, an empty parameter string and no flags.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), empty.as_ptr(), 0) };
        if r == 0 {
            loaded += 1;
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                log::warn!("module {name}: {e}");
            }
        }
    }
    loaded
}

/// Sets the guest's wall clock: after a restore from a template it is the template's.
pub fn set_realtime(secs: i64, nanos: i32) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`; `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `bytes` into the kernel's input pool, credited as entropy, and reseeds the kernel's
/// generator at once. Why both: every VM restored from one template starts with the same
/// generator state, and once the generator is initialised new input only reaches
/// `/dev/urandom` at the next periodic reseed (up to a minute later); `RNDRESEEDCRNG` makes it
/// take effect now, so two VMs from one template never hand out the same bytes.
pub fn add_entropy(bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let random = fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + bytes.len() + 3);
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // Whole u32 words for the kernel's `buf` (it reads buf_size bytes; the padding is unread).
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size it declares, from memory we own.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Finds `/dev/vportNpM` of the virtio-serial port called `name`, waiting for the driver to
/// create it (10–30 ms after virtio_console loads). No udev means no `/dev/virtio-ports/NAME`.
pub async fn find_port(name: &str, timeout: Duration) -> Result<std::path::PathBuf, String> {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let found = fs::read_to_string(e.path().join("name"))
                    .map(|n| n.trim() == name)
                    .unwrap_or(false);
                if found {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!("no virtio-serial port named {name:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Powers the VM off: QEMU exits about 16 ms later (with `-no-reboot`).
pub fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: plain syscall; it returns only on failure.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    fatal()
}

/// The agent cannot go on. As PID 1, exiting panics the kernel, which (`panic=-1`,
/// `-no-reboot`) ends QEMU: a clean failure signal for the host. Elsewhere, exit 1.
pub fn fatal() -> ! {
    if std::process::id() == 1 {
        nix::unistd::sync();
        // SAFETY: plain syscall; it returns only on failure.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_settings() {
        let c = Cmdline::parse("panic=-1 quiet agent.port=ctl agent.debug agent.share=share");
        assert_eq!(c.port, "ctl");
        assert!(c.debug);
        assert_eq!(c.shares, ["share"]);
        let c = Cmdline::parse("quiet");
        assert_eq!(c.port, "agent");
        assert!(!c.debug);
    }

    #[test]
    fn missing_module_order_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_modules(dir.path()), 0);
    }
}
