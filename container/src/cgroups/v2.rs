//! cgroup v2: a single directory; settings go to the unified interface files, converted from
//! the v1-flavoured OCI values the same way runc converts them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxRdma, LinuxResources};

use super::devices::DeviceState;
use super::{ebpf, fs, v1, wait_until, CgroupError, Result};

/// A missing interface file on v2 means the controller is not enabled for this cgroup, which
/// is worth saying plainly instead of surfacing ENOENT.
fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    match fs::write(dir, file, value) {
        Err(CgroupError::Write { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(CgroupError::ControllerMissing {
                controller: file.split('.').next().unwrap_or(file).to_string(),
                file: file.to_string(),
                path: dir.to_path_buf(),
            })
        }
        r => r,
    }
}

pub(crate) fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
    if let Some(cpu) = r.cpu() {
        set_cpuset(dir, cpu)?;
        set_cpu(dir, cpu)?;
    }
    if let Some(mem) = r.memory() {
        set_memory(dir, mem)?;
    }
    if let Some(pids) = r.pids() {
        if pids.limit() != 0 {
            write(dir, "pids.max", &v1::pids_value(pids.limit()))?;
        }
    }
    if let Some(bio) = r.block_io() {
        set_io(dir, bio)?;
    }
    for l in r.hugepage_limits().iter().flatten() {
        let ps = v1::checked_page_size(l)?;
        let value = if l.limit() < 0 {
            "max".to_string()
        } else {
            l.limit().to_string()
        };
        write(dir, &format!("hugetlb.{ps}.max"), &value)?;
        let rsvd = format!("hugetlb.{ps}.rsvd.max");
        if dir.join(&rsvd).exists() {
            write(dir, &rsvd, &value)?;
        }
    }
    if let Some(rdma) = r.rdma().as_ref().filter(|m| !m.is_empty()) {
        for line in rdma_lines(rdma)? {
            write(dir, "rdma.max", &line)?;
        }
    }
    if let Some(net) = r.network() {
        if net.class_id().is_some() || net.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            log::warn!("cgroup v2 has no net_cls/net_prio controllers; ignoring network resources");
        }
    }
    if let Some(rules) = r.devices() {
        let state = DeviceState::from_spec(rules)?;
        ebpf::apply(dir, &state)?;
    }
    // Last, so explicit unified values override the converted ones, as in runc.
    if let Some(unified) = r.unified() {
        set_unified(dir, unified)?;
    }
    Ok(())
}

/// runc's linear mapping of cpu.shares [2, 262144] onto cpu.weight [1, 10000]; keeping the same
/// formula keeps the same relative weights for containers run by either runtime.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// runc's mapping of blkio weight [10, 1000] onto io.weight [1, 10000].
pub(crate) fn blkio_to_io_weight(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(10, 1000));
    1 + ((w - 10) * 9999) / 990
}

/// OCI (like v1) gives memory+swap; v2 limits swap alone. Follows runc's
/// ConvertMemorySwapToCgroupV2Value, returning the memory.swap.max value to write, if any.
pub(crate) fn swap_max(memory: i64, memsw: i64) -> Result<Option<String>> {
    let invalid = |reason: &str| CgroupError::InvalidValue {
        file: "memory.swap.max".into(),
        value: format!("memory={memory} swap={memsw}"),
        reason: reason.to_string(),
    };
    // Unlimited memory with swap unspecified means unlimited swap, as on v1.
    if memory == -1 && memsw == 0 {
        return Ok(Some("max".into()));
    }
    match memsw {
        0 => return Ok(None),
        -1 => return Ok(Some("max".into())),
        s if s < 0 => return Err(invalid("swap must be -1, 0 or positive")),
        _ => {}
    }
    if memory == 0 || memory == -1 {
        return Err(invalid("a swap limit needs a memory limit"));
    }
    if memory < 0 {
        return Err(invalid("memory must be -1, 0 or positive"));
    }
    if memsw < memory {
        return Err(invalid("memory+swap limit must be >= the memory limit"));
    }
    Ok(Some((memsw - memory).to_string()))
}

/// 0 means "leave alone", -1 "unlimited".
fn mem_value(file: &str, v: i64) -> Result<Option<String>> {
    match v {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        v if v < 0 => Err(CgroupError::InvalidValue {
            file: file.into(),
            value: v.to_string(),
            reason: "must be -1 (unlimited) or positive".into(),
        }),
        v => Ok(Some(v.to_string())),
    }
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<()> {
    let limit = m.limit().unwrap_or(0);
    // Swap first: lowering memory.max below usage can trigger reclaim into swap, which the
    // new swap limit should already govern.
    if let Some(swap) = swap_max(limit, m.swap().unwrap_or(0))? {
        match write(dir, "memory.swap.max", &swap) {
            // Without swap accounting there is nothing to limit, so "unlimited" and
            // "no swap" both already hold.
            Err(CgroupError::ControllerMissing { .. }) if swap == "max" || swap == "0" => {}
            r => r?,
        }
    }
    if let Some(v) = mem_value("memory.max", limit)? {
        write(dir, "memory.max", &v)?;
    }
    if let Some(v) = mem_value("memory.low", m.reservation().unwrap_or(0))? {
        write(dir, "memory.low", &v)?;
    }
    if m.kernel().is_some_and(|k| k != 0) || m.kernel_tcp().is_some_and(|k| k != 0) {
        log::warn!(
            "cgroup v2 accounts kernel memory within memory.max; ignoring memory.kernel/kernelTCP"
        );
    }
    if m.swappiness().is_some() {
        log::warn!("cgroup v2 has no per-cgroup swappiness; ignoring memory.swappiness");
    }
    if m.disable_oom_killer() == Some(true) {
        log::warn!("cgroup v2 cannot disable the OOM killer; ignoring memory.disableOOMKiller");
    }
    Ok(())
}

fn set_cpuset(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

/// cpu.max is "$QUOTA $PERIOD" where QUOTA may be "max"; one write sets both, so the v1
/// ordering dance is unnecessary.
pub(crate) fn cpu_max(quota: i64, period: u64) -> Option<String> {
    if quota == 0 && period == 0 {
        return None;
    }
    let mut s = if quota > 0 {
        quota.to_string()
    } else {
        "max".to_string()
    };
    if period != 0 {
        s.push(' ');
        s.push_str(&period.to_string());
    }
    Some(s)
}

fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(shares) = c.shares().filter(|&s| s != 0) {
        write(dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
    }
    if let Some(v) = cpu_max(c.quota().unwrap_or(0), c.period().unwrap_or(0)) {
        write(dir, "cpu.max", &v)?;
    }
    if let Some(burst) = c.burst() {
        write(dir, "cpu.max.burst", &burst.to_string())?;
    }
    if let Some(idle) = c.idle() {
        write(dir, "cpu.idle", &idle.to_string())?;
    }
    if c.realtime_runtime().is_some_and(|v| v != 0) || c.realtime_period().is_some_and(|v| v != 0) {
        log::warn!("cgroup v2 does not support realtime CPU bandwidth; ignoring cpu.realtime*");
    }
    Ok(())
}

fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    // BFQ takes the v1 weight scale directly, and is the only one with per-device weights
    // in v1 terms; io.weight (used otherwise) needs the scale converted.
    let bfq = dir.join("io.bfq.weight").exists();
    if let Some(w) = b.weight().filter(|&w| w != 0) {
        if bfq {
            write(dir, "io.bfq.weight", &w.to_string())?;
        } else {
            write(dir, "io.weight", &blkio_to_io_weight(w).to_string())?;
        }
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight().filter(|&w| w != 0) {
            let (file, value) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", blkio_to_io_weight(w))
            };
            write(
                dir,
                file,
                &format!("{}:{} {}", wd.major(), wd.minor(), value),
            )?;
        }
    }
    if b.leaf_weight().is_some()
        || b.weight_device()
            .iter()
            .flatten()
            .any(|w| w.leaf_weight().is_some())
    {
        log::warn!("cgroup v2 has no leaf weights; ignoring blockIO leafWeight");
    }
    let throttles = [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ];
    for (key, list) in throttles {
        for td in list.iter().flatten() {
            let v = format!("{}:{} {}={}", td.major(), td.minor(), key, td.rate());
            write(dir, "io.max", &v)?;
        }
    }
    Ok(())
}

/// rdma.max lines ("mlx4_0 hca_handle=2 hca_object=2000"); same format on v1 and v2.
pub(crate) fn rdma_lines(rdma: &HashMap<String, LinuxRdma>) -> Result<Vec<String>> {
    let mut devs: Vec<_> = rdma.iter().collect();
    devs.sort_by(|a, b| a.0.cmp(b.0));
    let mut lines = Vec::new();
    for (dev, lim) in devs {
        if dev.is_empty() || dev.contains(char::is_whitespace) {
            return Err(CgroupError::InvalidValue {
                file: "rdma.max".into(),
                value: dev.clone(),
                reason: "device name must be non-empty without whitespace".into(),
            });
        }
        let mut line = dev.clone();
        if let Some(h) = lim.hca_handles() {
            line.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = lim.hca_objects() {
            line.push_str(&format!(" hca_object={o}"));
        }
        if line.len() > dev.len() {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// Keys are interface file names inside the cgroup, so anything that could address another
/// file, or that acts on processes rather than resources, is refused. Values are written line
/// by line because files like io.max take one entry per write.
fn set_unified(dir: &Path, unified: &HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<_> = unified.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in keys {
        let bad = key.contains('/')
            || key.starts_with('.')
            || !matches!(key.split_once('.'), Some((c, p)) if !c.is_empty() && !p.is_empty())
            || matches!(
                key.as_str(),
                "cgroup.procs" | "cgroup.threads" | "cgroup.kill" | "cgroup.freeze"
            );
        if bad {
            return Err(CgroupError::InvalidValue {
                file: "unified".into(),
                value: key.clone(),
                reason: "key must be a resource interface file name like \"memory.high\"".into(),
            });
        }
        for line in value.lines().filter(|l| !l.trim().is_empty()) {
            write(dir, key, line)?;
        }
        if value.trim().is_empty() {
            write(dir, key, value)?;
        }
    }
    Ok(())
}

/// v2 only lets a cgroup use a controller that every ancestor enables for its children, so
/// each level from the root down to the parent of `dir` gets all controllers it has. Like
/// runc, a refused bulk write is retried one controller at a time and further failures are
/// tolerated (apply() reports any controller that really ends up missing).
pub(crate) fn enable_controllers(root: &Path, dir: &Path) -> Result<()> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut level = root.to_path_buf();
    for comp in rel.components() {
        enable_all_at(&level);
        level.push(comp);
    }
    Ok(())
}

fn enable_all_at(level: &Path) {
    let available = fs::read(level, "cgroup.controllers").unwrap_or_default();
    let enabled = fs::read(level, "cgroup.subtree_control").unwrap_or_default();
    let missing: Vec<String> = available
        .split_whitespace()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return;
    }
    if fs::write(level, "cgroup.subtree_control", &missing.join(" ")).is_err() {
        for c in &missing {
            if let Err(e) = fs::write(level, "cgroup.subtree_control", c) {
                log::debug!("cannot enable controller: {e}");
            }
        }
    }
}

fn frozen_event(dir: &Path) -> Option<bool> {
    let events = fs::read(dir, "cgroup.events").ok()?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1")
}

pub(crate) fn is_frozen(dir: &Path) -> bool {
    frozen_event(dir).unwrap_or_else(|| fs::read(dir, "cgroup.freeze").is_ok_and(|v| v == "1"))
}

/// cgroup.freeze only requests the change; cgroup.events reports when every task has actually
/// stopped (or resumed), which is what callers rely on.
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<()> {
    write(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let settled = wait_until(2000, Duration::from_millis(5), || {
        Ok(frozen_event(dir).unwrap_or(frozen) == frozen)
    })?;
    if settled {
        return Ok(());
    }
    if frozen {
        let _ = fs::write(dir, "cgroup.freeze", "0");
    }
    Err(CgroupError::Timeout {
        op: if frozen { "freeze" } else { "thaw" },
        path: dir.to_path_buf(),
        detail: format!("cgroup.events never reported frozen {}", u8::from(frozen)),
    })
}
