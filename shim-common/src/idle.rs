//! Handing memory back once the daemon goes quiet.
//!
//! A shim lives for as long as its container and spends nearly all of that time idle, yet a
//! burst of requests (create, start, exec) leaves it holding what the burst touched: free heap
//! pages, and nearly all of its own code. Code is mapped 64 KiB around every page fault, and the
//! functions of one request are scattered over the whole binary, so one Create maps almost every
//! page of it (about 2 MiB, most of an idle shim's PSS). When no request came for [`QUIET`],
//! the daemon returns its free heap (`malloc_trim`) and unmaps the clean pages of its own
//! executable (`MADV_DONTNEED`). They stay in the page cache: the next request faults back in
//! what it runs, a few dozen minor faults, microseconds against the milliseconds a request
//! takes. Pages that were ever written (relocated data) are left alone, since dropping them
//! would lose the writes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Longer than the gaps between the calls of one containerd operation (create, start, wait and
/// state come within milliseconds of each other), short next to a container's idle life.
pub const QUIET: Duration = Duration::from_millis(250);

/// Counts requests and trims after each quiet spell.
#[derive(Clone)]
pub struct IdleTrim {
    activity: Arc<Notify>,
}

impl IdleTrim {
    pub fn start() -> IdleTrim {
        let activity = Arc::new(Notify::new());
        let watched = activity.clone();
        tokio::spawn(async move {
            loop {
                watched.notified().await;
                while tokio::time::timeout(QUIET, watched.notified())
                    .await
                    .is_ok()
                {}
                trim();
            }
        });
        IdleTrim { activity }
    }

    /// Something happened: the quiet spell starts again from now.
    pub fn busy(&self) {
        self.activity.notify_one();
    }
}

fn trim() {
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Err(e) = drop_clean_code() {
        log::debug!("unmapping idle code pages: {e}");
    }
}

/// `MADV_DONTNEED` on every read-only mapping of our executable that holds no anonymous
/// (written) page: for those, dropping the mapping loses nothing.
fn drop_clean_code() -> std::io::Result<()> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut candidate: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line, &exe) {
            candidate = range;
            continue;
        }
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            if let Some((start, end)) = candidate.take() {
                if anon.trim() == "0 kB" {
                    // SAFETY: the range is one whole read-only, file-backed mapping of our
                    // executable without private copies; dropping its pages only makes the
                    // next access fault them back in from the file.
                    unsafe {
                        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                    }
                }
            }
        }
    }
    Ok(())
}

/// For a mapping header line of smaps: `Some(Some(range))` when it maps `exe` read-only,
/// `Some(None)` for any other mapping, `None` when the line is not a header.
fn mapping_header(line: &str, exe: &std::path::Path) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let path = fields.nth(3);
    let ours = !perms.contains('w') && path.is_some_and(|p| std::path::Path::new(p) == exe);
    Some(ours.then_some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_from_fields() {
        let exe = std::path::Path::new("/usr/bin/shim");
        assert_eq!(
            mapping_header(
                "55d1c7cf3000-55d1c7f08000 r-xp 000e7000 fe:00 5310336    /usr/bin/shim",
                exe
            ),
            Some(Some((0x55d1c7cf3000, 0x55d1c7f08000)))
        );
        assert_eq!(
            mapping_header(
                "55d1c7f4d000-55d1c7f51000 rw-p 0033f000 fe:00 5310336    /usr/bin/shim",
                exe
            ),
            Some(None)
        );
        assert_eq!(
            mapping_header("7f00-7f10 r-xp 00000000 fe:00 1 /usr/lib/libc.so.6", exe),
            Some(None)
        );
        assert_eq!(mapping_header("Anonymous:             0 kB", exe), None);
        assert_eq!(mapping_header("VmFlags: rd ex mr mw me", exe), None);
    }

    #[test]
    fn trimming_keeps_the_process_working() {
        // Drops this test binary's own code pages and runs on: they fault back in.
        drop_clean_code().expect("trim");
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
    }
}
