//! The agent's one `waitpid(-1)` loop. As PID 1 every orphan in the guest is our child, and the
//! container library's setup processes are spawned and never waited by anyone else, so exits
//! are collected in one place and handed to whoever registered the pid.
//!
//! A process can exit before its creator learns its pid (an exec that fails at once), so exits
//! nobody claimed are kept, stamped with a sequence number. A creator takes the sequence before
//! it starts a process and accepts only a kept exit stamped later: a pid seen exiting before
//! that was an earlier process that happened to have the same number.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// The exit code, or 128 + the signal.
    pub status: u32,
    pub at: SystemTime,
}

/// Kept unclaimed exits; enough for bursts of short-lived setup processes.
const UNCLAIMED_MAX: usize = 4096;

#[derive(Default)]
struct State {
    seq: u64,
    watched: HashMap<u32, watch::Sender<Option<Exit>>>,
    unclaimed: VecDeque<(u64, Exit)>,
}

pub struct Reaper {
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A receiver that sees `Some(exit)` once the process is gone.
pub type ExitWatch = watch::Receiver<Option<Exit>>;

impl Reaper {
    /// Starts the loop on the current tokio runtime.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper {
            state: Mutex::new(State::default()),
        });
        let r = reaper.clone();
        tokio::spawn(async move {
            let mut sigchld = match signal(SignalKind::child()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("SIGCHLD handler: {e}");
                    return;
                }
            };
            loop {
                r.reap();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        reaper
    }

    /// The sequence number to pass to [`Reaper::watch`] for a process started after now.
    pub fn mark(&self) -> u64 {
        lock(&self.state).seq
    }

    /// Watches `pid`, a process started after `mark` was taken.
    pub fn watch(&self, pid: u32, mark: u64) -> ExitWatch {
        let mut st = lock(&self.state);
        let early = st
            .unclaimed
            .iter()
            .position(|(seq, e)| e.pid == pid && *seq > mark);
        if let Some((_, exit)) = early.and_then(|i| st.unclaimed.remove(i)) {
            return watch::channel(Some(exit)).1;
        }
        let (tx, rx) = watch::channel(None);
        st.watched.insert(pid, tx);
        rx
    }

    fn reap(&self) {
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            self.record(exit.0.as_raw() as u32, exit.1);
        }
    }

    fn record(&self, pid: u32, status: u32) {
        let exit = Exit {
            pid,
            status,
            at: SystemTime::now(),
        };
        let mut st = lock(&self.state);
        st.seq += 1;
        if let Some(tx) = st.watched.remove(&pid) {
            let _ = tx.send(Some(exit));
            return;
        }
        let seq = st.seq;
        st.unclaimed.push_back((seq, exit));
        if st.unclaimed.len() > UNCLAIMED_MAX {
            st.unclaimed.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaper() -> Reaper {
        Reaper {
            state: Mutex::new(State::default()),
        }
    }

    #[test]
    fn watched_exit_is_delivered() {
        let r = reaper();
        let mark = r.mark();
        let w = r.watch(10, mark);
        assert_eq!(*w.borrow(), None);
        r.record(10, 137);
        assert_eq!(w.borrow().map(|e| e.status), Some(137));
    }

    #[test]
    fn early_exit_is_kept_but_not_an_older_one() {
        let r = reaper();
        r.record(20, 1); // an earlier process with the same pid
        let mark = r.mark();
        assert_eq!(
            *r.watch(20, mark).borrow(),
            None,
            "stale exit must not match"
        );
        let r = reaper();
        let mark = r.mark();
        r.record(30, 2); // exited before its creator registered it
        assert_eq!(r.watch(30, mark).borrow().map(|e| e.status), Some(2));
    }
}
