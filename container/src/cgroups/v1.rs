//! cgroup v1: one directory per hierarchy, values in the historical per-controller files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNetwork, LinuxResources,
};

use super::devices::{v1_transition, DeviceState};
use super::{fs, wait_until, CgroupError, Result, V1Dir};

pub(crate) fn dir_for(hierarchies: &[V1Dir], controller: &str) -> Option<PathBuf> {
    hierarchies
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == controller))
        .map(|h| h.dir.clone())
}

/// A hierarchy that is not mounted is skipped, as runc does, so specs written for richer hosts
/// still run; the warning keeps it from going unnoticed.
fn need(hierarchies: &[V1Dir], controller: &str, what: &str) -> Option<PathBuf> {
    let dir = dir_for(hierarchies, controller);
    if dir.is_none() {
        log::warn!("cgroup v1 {controller} hierarchy is not mounted; ignoring {what}");
    }
    dir
}

pub(crate) fn apply(hierarchies: &[V1Dir], r: &LinuxResources) -> Result<()> {
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(CgroupError::InvalidArgument(
            "resources.unified needs cgroup v2, but this host uses cgroup v1".into(),
        ));
    }
    if let Some(cpu) = r.cpu() {
        if cpu.cpus().as_ref().is_some_and(|s| !s.is_empty())
            || cpu.mems().as_ref().is_some_and(|s| !s.is_empty())
        {
            if let Some(dir) = need(hierarchies, "cpuset", "cpu.cpus/cpu.mems") {
                set_cpuset(&dir, cpu)?;
            }
        }
    }
    if let Some(rules) = r.devices() {
        if let Some(dir) = need(hierarchies, "devices", "devices") {
            set_devices(&dir, rules)?;
        }
    }
    if let Some(mem) = r.memory() {
        if let Some(dir) = need(hierarchies, "memory", "memory limits") {
            set_memory(&dir, mem)?;
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(dir) = need(hierarchies, "cpu", "cpu limits") {
            set_cpu(&dir, cpu)?;
        }
    }
    if let Some(pids) = r.pids() {
        if pids.limit() != 0 {
            if let Some(dir) = need(hierarchies, "pids", "pids.limit") {
                fs::write(&dir, "pids.max", &pids_value(pids.limit()))?;
            }
        }
    }
    if let Some(bio) = r.block_io() {
        if let Some(dir) = need(hierarchies, "blkio", "blockIO") {
            set_blkio(&dir, bio)?;
        }
    }
    if let Some(limits) = r.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
        if let Some(dir) = need(hierarchies, "hugetlb", "hugepageLimits") {
            set_hugetlb(&dir, limits)?;
        }
    }
    if let Some(net) = r.network() {
        set_network(hierarchies, net)?;
    }
    if let Some(rdma) = r.rdma().as_ref().filter(|m| !m.is_empty()) {
        if let Some(dir) = need(hierarchies, "rdma", "rdma") {
            for line in super::v2::rdma_lines(rdma)? {
                fs::write(&dir, "rdma.max", &line)?;
            }
        }
    }
    Ok(())
}

/// pids.max takes "max" for unlimited; the spec uses any negative number for that.
pub(crate) fn pids_value(limit: i64) -> String {
    if limit < 0 {
        "max".to_string()
    } else {
        limit.to_string()
    }
}

/// The kernel refuses to let tasks join a cpuset whose cpus/mems are empty, and new v1 cpusets
/// start empty, so each level from the mount down inherits its parent's values when unset.
pub(crate) fn populate_cpuset(mount: &Path, dir: &Path) -> Result<()> {
    let Ok(rel) = dir.strip_prefix(mount) else {
        return Ok(());
    };
    let mut parent = mount.to_path_buf();
    for comp in rel.components() {
        let current = parent.join(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let Ok(value) = fs::read(&current, file) else {
                continue;
            };
            if !value.is_empty() {
                continue;
            }
            let inherited = fs::read(&parent, file)?;
            if !inherited.is_empty() {
                fs::write(&current, file, &inherited)?;
            }
        }
        parent = current;
    }
    Ok(())
}

fn set_cpuset(dir: &Path, cpu: &LinuxCpu) -> Result<()> {
    if let Some(cpus) = cpu.cpus().as_ref().filter(|s| !s.is_empty()) {
        fs::write(dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = cpu.mems().as_ref().filter(|s| !s.is_empty()) {
        fs::write(dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

fn set_devices(dir: &Path, rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<()> {
    let target = DeviceState::from_spec(rules)?;
    let current = fs::read(dir, "devices.list")
        .ok()
        .and_then(|l| DeviceState::parse_list(&l));
    for (file, rule) in v1_transition(current.as_ref(), &target) {
        fs::write(dir, file, &rule)?;
    }
    Ok(())
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<()> {
    let limit = m.limit().unwrap_or(0);
    let mut swap = m.swap().unwrap_or(0);
    let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
    // "Unlimited memory" with swap unspecified means unlimited memory+swap too; otherwise the
    // old memsw limit would keep capping the container.
    if limit == -1 && swap == 0 && has_memsw {
        swap = -1;
    }
    if swap != 0 && !has_memsw {
        log::warn!(
            "swap accounting is disabled in the kernel; ignoring memory.swap={swap} for {}",
            dir.display()
        );
        swap = 0;
    }
    // The kernel requires memory <= memsw at every moment, so when raising limits memsw must
    // go first and when lowering it must go last.
    let swap_first = limit != 0
        && swap != 0
        && (swap == -1
            || fs::read(dir, "memory.limit_in_bytes")
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|cur| u64::try_from(swap).is_ok_and(|s| cur < s)));
    if swap_first {
        set_swap(dir, swap)?;
        set_mem_limit(dir, limit)?;
    } else {
        set_mem_limit(dir, limit)?;
        set_swap(dir, swap)?;
    }
    if let Some(res) = m.reservation().filter(|&r| r != 0) {
        fs::write(dir, "memory.soft_limit_in_bytes", &res.to_string())?;
    }
    if let Some(kernel) = m.kernel().filter(|&k| k != 0) {
        // Kernel memory limits are deprecated (ignored or refused by 5.16+ kernels), so a
        // failure must not stop the container.
        if let Err(e) = fs::write(dir, "memory.kmem.limit_in_bytes", &kernel.to_string()) {
            log::warn!("ignoring memory.kernel: {e}");
        }
    }
    if let Some(tcp) = m.kernel_tcp().filter(|&k| k != 0) {
        fs::write(dir, "memory.kmem.tcp.limit_in_bytes", &tcp.to_string())?;
    }
    if let Some(sw) = m.swappiness() {
        if sw > 100 {
            return Err(CgroupError::InvalidValue {
                file: "memory.swappiness".into(),
                value: sw.to_string(),
                reason: "must be between 0 and 100".into(),
            });
        }
        fs::write(dir, "memory.swappiness", &sw.to_string())?;
    }
    if let Some(disable) = m.disable_oom_killer() {
        fs::write(dir, "memory.oom_control", if disable { "1" } else { "0" })?;
    }
    Ok(())
}

fn set_mem_limit(dir: &Path, limit: i64) -> Result<()> {
    if limit == 0 {
        return Ok(());
    }
    let value = limit.to_string();
    match fs::write(dir, "memory.limit_in_bytes", &value) {
        // EBUSY means the container already uses more than the new limit; say how much.
        Err(CgroupError::Write { path, source, .. })
            if source.raw_os_error() == Some(libc::EBUSY) =>
        {
            let usage = fs::read(dir, "memory.usage_in_bytes").unwrap_or_default();
            let peak = fs::read(dir, "memory.max_usage_in_bytes").unwrap_or_default();
            Err(CgroupError::InvalidValue {
                file: path.display().to_string(),
                value,
                reason: format!(
                    "limit is below current usage (usage {usage}, peak {peak}): {source}"
                ),
            })
        }
        r => r,
    }
}

fn set_swap(dir: &Path, swap: i64) -> Result<()> {
    if swap == 0 {
        return Ok(());
    }
    fs::write(dir, "memory.memsw.limit_in_bytes", &swap.to_string())
}

fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(shares) = c.shares().filter(|&s| s != 0) {
        let value = shares.to_string();
        fs::write(dir, "cpu.shares", &value)?;
        // The kernel silently clamps shares to [2, 262144]; runc reports that instead of
        // running with a different weight than requested.
        let actual: u64 = fs::read(dir, "cpu.shares")?.parse().unwrap_or(shares);
        if actual != shares {
            return Err(CgroupError::InvalidValue {
                file: "cpu.shares".into(),
                value,
                reason: format!(
                    "the kernel clamped it to {actual} (the {} allowed value)",
                    if actual < shares {
                        "maximum"
                    } else {
                        "minimum"
                    }
                ),
            });
        }
    }
    let quota = c.quota().unwrap_or(0);
    set_period_pair(
        dir,
        ("cpu.cfs_period_us", c.period().unwrap_or(0)),
        ("cpu.cfs_quota_us", quota),
    )?;
    if let Some(burst) = c.burst() {
        fs::write(dir, "cpu.cfs_burst_us", &burst.to_string())?;
    }
    if let Some(idle) = c.idle() {
        fs::write(dir, "cpu.idle", &idle.to_string())?;
    }
    set_period_pair(
        dir,
        ("cpu.rt_period_us", c.realtime_period().unwrap_or(0)),
        ("cpu.rt_runtime_us", c.realtime_runtime().unwrap_or(0)),
    )
}

/// Period and quota/runtime are validated against each other (and against the parent) on
/// every write, so a new period can be refused until the new quota is in place. As in runc,
/// such an EINVAL is tolerated when a quota follows, and the period is written again after it.
fn set_period_pair(dir: &Path, period: (&str, u64), quota: (&str, i64)) -> Result<()> {
    let mut retry_period = false;
    if period.1 != 0 {
        if let Err(e) = fs::write(dir, period.0, &period.1.to_string()) {
            let einval = matches!(&e, CgroupError::Write { source, .. }
                if source.raw_os_error() == Some(libc::EINVAL));
            if !einval || quota.1 == 0 {
                return Err(e);
            }
            retry_period = true;
        }
    }
    if quota.1 != 0 {
        fs::write(dir, quota.0, &quota.1.to_string())?;
        if retry_period {
            fs::write(dir, period.0, &period.1.to_string())?;
        }
    }
    Ok(())
}

fn set_blkio(dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    // Kernels without CFQ only have the BFQ variants of the weight files.
    let (weight_file, weight_dev_file) = if dir.join("blkio.weight").exists() {
        ("blkio.weight", "blkio.weight_device")
    } else {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    };
    if let Some(w) = b.weight().filter(|&w| w != 0) {
        fs::write(dir, weight_file, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
        fs::write(dir, "blkio.leaf_weight", &w.to_string())?;
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight().filter(|&w| w != 0) {
            let v = format!("{}:{} {}", wd.major(), wd.minor(), w);
            fs::write(dir, weight_dev_file, &v)?;
        }
        if let Some(w) = wd.leaf_weight().filter(|&w| w != 0) {
            let v = format!("{}:{} {}", wd.major(), wd.minor(), w);
            fs::write(dir, "blkio.leaf_weight_device", &v)?;
        }
    }
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    for (file, list) in throttles {
        for td in list.iter().flatten() {
            let v = format!("{}:{} {}", td.major(), td.minor(), td.rate());
            fs::write(dir, file, &v)?;
        }
    }
    Ok(())
}

/// Page sizes become part of a file name, so anything but "<digits><unit>B" is refused.
pub(crate) fn checked_page_size(limit: &LinuxHugepageLimit) -> Result<&str> {
    let ps = limit.page_size().as_str();
    let digits = ps.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &ps[digits.len()..];
    let ok = !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_digit())
        && matches!(unit, "B" | "KB" | "MB" | "GB" | "TB" | "PB");
    if ok {
        Ok(ps)
    } else {
        Err(CgroupError::InvalidValue {
            file: "hugepageLimits.pageSize".into(),
            value: ps.to_string(),
            reason: "expected a size like \"2MB\" or \"1GB\"".into(),
        })
    }
}

fn set_hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<()> {
    let mut rsvd = true;
    for l in limits {
        let ps = checked_page_size(l)?;
        let value = l.limit().to_string();
        fs::write(dir, &format!("hugetlb.{ps}.limit_in_bytes"), &value)?;
        // Reservation limits (5.7+) are what actually stop over-commit at mmap time.
        let rsvd_file = format!("hugetlb.{ps}.rsvd.limit_in_bytes");
        if rsvd && dir.join(&rsvd_file).exists() {
            fs::write(dir, &rsvd_file, &value)?;
        } else {
            rsvd = false;
        }
    }
    Ok(())
}

fn set_network(hierarchies: &[V1Dir], net: &LinuxNetwork) -> Result<()> {
    if let Some(id) = net.class_id() {
        if let Some(dir) = need(hierarchies, "net_cls", "network.classID") {
            fs::write(&dir, "net_cls.classid", &id.to_string())?;
        }
    }
    if let Some(prios) = net.priorities().as_ref().filter(|p| !p.is_empty()) {
        if let Some(dir) = need(hierarchies, "net_prio", "network.priorities") {
            for p in prios {
                let name = p.name();
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(CgroupError::InvalidValue {
                        file: "net_prio.ifpriomap".into(),
                        value: name.clone(),
                        reason: "interface name must be non-empty without whitespace".into(),
                    });
                }
                fs::write(
                    &dir,
                    "net_prio.ifpriomap",
                    &format!("{name} {}", p.priority()),
                )?;
            }
        }
    }
    Ok(())
}

/// Tasks can linger in FREEZING (e.g. one in an uninterruptible sleep, or new tasks forked
/// mid-freeze). runc's recipe: keep re-requesting FROZEN, and now and then thaw briefly so
/// stuck tasks get a chance to reach the freezer; give up (thawed) after a bounded time.
pub(crate) fn freeze(dir: &Path) -> Result<()> {
    for i in 0..1000u32 {
        if i % 50 == 49 {
            fs::write(dir, "freezer.state", "THAWED")?;
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::write(dir, "freezer.state", "FROZEN")?;
        let state = fs::read(dir, "freezer.state")?;
        match state.as_str() {
            "FROZEN" => return Ok(()),
            "FREEZING" => {
                std::thread::sleep(Duration::from_micros(if i < 20 { 100 } else { 1000 }))
            }
            other => {
                return Err(CgroupError::Timeout {
                    op: "freeze",
                    path: dir.to_path_buf(),
                    detail: format!("unexpected freezer.state {other:?}"),
                })
            }
        }
    }
    // Leaving it half-frozen would hang whatever is running there.
    let _ = fs::write(dir, "freezer.state", "THAWED");
    Err(CgroupError::Timeout {
        op: "freeze",
        path: dir.to_path_buf(),
        detail: "still FREEZING after repeated attempts; thawed it again".into(),
    })
}

pub(crate) fn thaw(dir: &Path) -> Result<()> {
    fs::write(dir, "freezer.state", "THAWED")?;
    let settled = wait_until(1000, Duration::from_millis(1), || {
        Ok(fs::read(dir, "freezer.state")? == "THAWED")
    })?;
    if settled {
        Ok(())
    } else {
        Err(CgroupError::Timeout {
            op: "thaw",
            path: dir.to_path_buf(),
            detail: "freezer.state did not become THAWED".into(),
        })
    }
}
