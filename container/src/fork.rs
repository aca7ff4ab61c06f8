//! The setup process's fork of the container's process, born in the container's v2 cgroup
//! where the kernel lets it (see [`crate::cgroups::Placement`] for why that matters).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::unistd::{ForkResult, Pid};

use crate::cgroups::join_v2_slow;
use crate::error::{Error, Result};

/// The kernel's `struct clone_args` up to `cgroup` (its version 2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks like fork(2); with `v2`, the child is born in that cgroup directory. When the kernel
/// refuses that (no clone3 before 5.7, or a cgroup namespace or permission in the way), the
/// caller joins the cgroup the slow way first and forks plainly, so the child ends up in the
/// cgroup either way.
///
/// # Safety
/// As for fork(2): the calling process must be single-threaded, which the setup process is.
pub unsafe fn fork_into(v2: Option<&OwnedFd>) -> Result<ForkResult> {
    if let Some(dir) = v2 {
        let mut args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM duplicates the (single-threaded) process like
        // fork; `args` is a valid clone_args of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok(ForkResult::Child),
            pid if pid > 0 => {
                return Ok(ForkResult::Parent {
                    child: Pid::from_raw(pid as libc::pid_t),
                })
            }
            _ => {
                let refused = std::io::Error::last_os_error();
                join_v2_slow(dir).map_err(|e| {
                    Error::io(
                        format!("joining the v2 cgroup (cloning into it failed: {refused})"),
                        e,
                    )
                })?;
            }
        }
    }
    // SAFETY: forwarded from the caller: the process is single-threaded.
    unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", e))
}
