//! One waitpid loop for the whole daemon.
//!
//! The daemon is a child subreaper: container processes are re-parented to it when the runtime
//! that forked them exits, and so are any orphans below them. A single `waitpid(-1)` loop reaps
//! every one of them (no zombie survives) and fans each exit out to every subscriber, so no exit
//! is ever lost to a competing `wait`. Whoever spawns a child subscribes *before* spawning it, so
//! even an immediate exit is seen.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// A reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// The exit code, or 128 + signal number for a killed process, as containerd reports it.
    pub status: u32,
    pub at: SystemTime,
}

type Subscribers = Mutex<Vec<(u64, mpsc::UnboundedSender<Exit>)>>;

pub struct Reaper {
    subscribers: Subscribers,
    next_id: Mutex<u64>,
}

impl Reaper {
    /// Starts the loop on the current tokio runtime. Call it before spawning any child.
    pub fn start() -> Result<Arc<Reaper>> {
        let mut sigchld =
            signal(SignalKind::child()).map_err(|e| Error::io("watching SIGCHLD", e))?;
        let reaper = Arc::new(Reaper {
            subscribers: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
        });
        let weak = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            loop {
                let Some(reaper) = weak.upgrade() else { break };
                reaper.reap_all();
                drop(reaper);
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// An exit channel with no waitpid loop behind it: for a runtime whose processes are not
    /// host children (a VM's guest processes), which reports their exits with
    /// [`Reaper::publish`]. Kept apart from the daemon's reaper so that a guest pid can never be
    /// mistaken for a host child's.
    pub fn channel() -> Arc<Reaper> {
        Arc::new(Reaper {
            subscribers: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
        })
    }

    /// Hands `exit` to every subscriber.
    pub fn publish(&self, exit: Exit) {
        let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for (_, tx) in subs.iter() {
            let _ = tx.send(exit);
        }
    }

    fn reap_all(&self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return;
                }
                Ok(s) => s,
            };
            let exit = match status {
                WaitStatus::Exited(pid, code) => (pid, code as u32),
                WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as u32),
                _ => continue,
            };
            let exit = Exit {
                pid: exit.0.as_raw() as u32,
                status: exit.1,
                at: SystemTime::now(),
            };
            self.publish(exit);
        }
    }

    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, tx));
        Subscription {
            id,
            rx,
            reaper: Arc::downgrade(self),
        }
    }

    /// Spawns `cmd`, already subscribed to its exit.
    pub fn spawn(self: &Arc<Self>, cmd: &mut Command) -> Result<Spawned> {
        let sub = self.subscribe();
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("running {program}"), e))?;
        Ok(Spawned { child, sub })
    }

    /// Spawns `cmd` and waits for it through the loop, capturing one of its outputs.
    /// Never use `Child::wait` in this daemon: the loop has already reaped the child.
    pub async fn run(
        self: &Arc<Self>,
        cmd: &mut Command,
        capture: Capture,
    ) -> Result<CommandOutput> {
        match capture {
            Capture::Stdout => {
                cmd.stdout(Stdio::piped());
            }
            Capture::Stderr => {
                cmd.stderr(Stdio::piped());
            }
            Capture::Nothing => {}
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut spawned = self.spawn(cmd)?;
        let pipe = match capture {
            Capture::Stdout => spawned.child.stdout.take().map(std::os::fd::OwnedFd::from),
            Capture::Stderr => spawned.child.stderr.take().map(std::os::fd::OwnedFd::from),
            Capture::Nothing => None,
        };
        let mut output = Vec::new();
        if let Some(fd) = pipe {
            let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| Error::io("reading command output", e))?;
            rx.read_to_end(&mut output)
                .await
                .map_err(|e| Error::io(format!("reading output of {program}"), e))?;
        }
        let exit = spawned.wait().await;
        Ok(CommandOutput {
            status: exit.status,
            output,
        })
    }
}

/// Which output of a command [`Reaper::run`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Nothing,
    Stdout,
    Stderr,
}

/// A child spawned through the reaper; its exit is waited for with [`Spawned::wait`].
pub struct Spawned {
    pub child: Child,
    sub: Subscription,
}

impl Spawned {
    pub async fn wait(mut self) -> Exit {
        let pid = self.child.id();
        self.sub.wait_for(pid).await
    }
}

pub struct CommandOutput {
    pub status: u32,
    /// The captured stream.
    pub output: Vec<u8>,
}

pub struct Subscription {
    id: u64,
    rx: mpsc::UnboundedReceiver<Exit>,
    reaper: Weak<Reaper>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<Exit> {
        self.rx.recv().await
    }

    /// Waits for `pid`'s exit, dropping the others this subscription sees.
    pub async fn wait_for(&mut self, pid: u32) -> Exit {
        loop {
            match self.rx.recv().await {
                Some(e) if e.pid == pid => return e,
                Some(_) => continue,
                // The loop never stops while a subscriber holds the reaper alive.
                None => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(r) = self.reaper.upgrade() {
            r.subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn exits_reach_subscribers() {
        let reaper = Reaper::start().unwrap();
        let out = reaper
            .run(
                Command::new("sh").args(["-c", "echo hi; exit 3"]),
                Capture::Stdout,
            )
            .await
            .unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.output, b"hi\n");
        let out = reaper
            .run(
                Command::new("sh").args(["-c", "kill -9 $$"]),
                Capture::Nothing,
            )
            .await
            .unwrap();
        assert_eq!(out.status, 137);
        assert_eq!(reaper.subscribers.lock().unwrap().len(), 0);
    }
}
