//! Fake-root tests of the exact files written, and real tests against this host's cgroups
//! (run only as root; each real test cleans up through a guard even when it fails).

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::*;

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).expect("valid LinuxResources JSON")
}

fn put(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write fake file");
}

fn get(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Files a v1 kernel would show in a fresh cgroup, per hierarchy directory name.
const V1_FILES: &[(&str, &[(&str, &str)])] = &[
    (
        "cpu,cpuacct",
        &[
            ("cpu.shares", "1024"),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "-1"),
            ("cpu.cfs_burst_us", "0"),
            ("cpu.rt_period_us", "1000000"),
            ("cpu.rt_runtime_us", "0"),
            ("cpu.idle", "0"),
        ],
    ),
    ("cpuset", &[("cpuset.cpus", ""), ("cpuset.mems", "")]),
    (
        "memory",
        &[
            ("memory.limit_in_bytes", "9223372036854771712"),
            ("memory.memsw.limit_in_bytes", "9223372036854771712"),
            ("memory.soft_limit_in_bytes", "9223372036854771712"),
            ("memory.kmem.tcp.limit_in_bytes", "9223372036854771712"),
            ("memory.swappiness", "60"),
            ("memory.oom_control", "oom_kill_disable 0"),
        ],
    ),
    (
        "devices",
        &[
            ("devices.allow", ""),
            ("devices.deny", ""),
            ("devices.list", "a *:* rwm"),
        ],
    ),
    ("freezer", &[("freezer.state", "THAWED")]),
    ("pids", &[("pids.max", "max")]),
    (
        "blkio",
        &[
            ("blkio.weight", "500"),
            ("blkio.weight_device", ""),
            ("blkio.throttle.read_bps_device", ""),
            ("blkio.throttle.write_bps_device", ""),
            ("blkio.throttle.read_iops_device", ""),
            ("blkio.throttle.write_iops_device", ""),
        ],
    ),
    ("hugetlb", &[("hugetlb.2MB.limit_in_bytes", "")]),
    (
        "net_cls,net_prio",
        &[("net_cls.classid", "0"), ("net_prio.ifpriomap", "")],
    ),
    ("systemd", &[]),
];

/// A hybrid host: v1 hierarchies (two of them co-mounted behind symlinks, as systemd sets
/// them up) plus cgroup2 at "unified"; `cgroup` ("ns/c1") is pre-populated with the files the
/// kernel would create.
fn fake_v1(cgroup: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for (hier, files) in V1_FILES {
        put(&root.join(hier).join("cgroup.procs"), "");
        let mut level = root.join(hier);
        for comp in Path::new(cgroup).components() {
            level = level.join(comp);
            put(&level.join("cgroup.procs"), "");
            for (f, v) in *files {
                put(&level.join(f), v);
            }
        }
    }
    put(&root.join("cpuset/cpuset.cpus"), "0-3");
    put(&root.join("cpuset/cpuset.mems"), "0");
    for (link, target) in [
        ("cpu", "cpu,cpuacct"),
        ("cpuacct", "cpu,cpuacct"),
        ("net_cls", "net_cls,net_prio"),
        ("net_prio", "net_cls,net_prio"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).expect("symlink");
    }
    put(&root.join("unified/cgroup.controllers"), "hugetlb");
    put(&root.join("unified/cgroup.procs"), "");
    put(&root.join("unified").join(cgroup).join("cgroup.procs"), "");
    tmp
}

#[test]
fn detect_layouts() {
    let v1 = fake_v1("ns/c1");
    assert_eq!(
        detect(v1.path()),
        Layout::Legacy {
            unified: Some(v1.path().join("unified"))
        }
    );
    let v2 = tempfile::tempdir().expect("tempdir");
    put(&v2.path().join("cgroup.controllers"), "cpu memory");
    assert_eq!(detect(v2.path()), Layout::Unified);
    let empty = tempfile::tempdir().expect("tempdir");
    assert_eq!(detect(empty.path()), Layout::Legacy { unified: None });
    assert!(matches!(
        Cgroup::create(empty.path(), "/x"),
        Err(CgroupError::NoHierarchy(_))
    ));
}

#[test]
fn cgroups_path_forms() {
    assert_eq!(
        parse_cgroups_path("/ns/id").expect("ok"),
        (false, PathBuf::from("ns/id"))
    );
    assert_eq!(
        parse_cgroups_path("ns//./id/").expect("ok"),
        (true, PathBuf::from("ns/id"))
    );
    assert_eq!(
        parse_cgroups_path("/../../etc/x/../y").expect("ok"),
        (false, PathBuf::from("etc/y"))
    );
    for bad in ["", "/", "/..", "."] {
        assert!(
            matches!(
                parse_cgroups_path(bad),
                Err(CgroupError::InvalidArgument(_))
            ),
            "{bad:?} must be refused"
        );
    }
    let err = parse_cgroups_path("system.slice:docker:abc").expect_err("systemd form");
    assert!(
        err.to_string().contains("systemd cgroups are unsupported"),
        "{err}"
    );
}

#[test]
fn mountinfo_cgroup_mounts() {
    let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:40 /docker/abc /mnt/my\\040cg rw - cgroup cgroup rw,memory,clone_children
";
    let mounts = parse_mountinfo_v1(text);
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[0].controllers, vec!["cpu", "cpuacct"]);
    assert_eq!(mounts[1].controllers, vec!["name=systemd"]);
    assert_eq!(mounts[2].mount, PathBuf::from("/mnt/my cg"));
    assert_eq!(mounts[2].mount_root, "/docker/abc");
    assert_eq!(mounts[2].controllers, vec!["memory"]);
}

#[test]
fn relative_path_goes_under_own_cgroup_per_hierarchy() {
    let fake = fake_v1("ns/c1");
    let proc_cgroup = "\
12:memory:/parent/x
11:cpu,cpuacct:/
10:name=systemd:/user.slice
0::/u
";
    let cg = Cgroup::resolve(fake.path(), "a/b", proc_cgroup, "").expect("resolve");
    let root = fs::canonicalize(fake.path()).expect("canon");
    assert_eq!(cg.memory_dir(), Some(root.join("memory/parent/x/a/b")));
    assert_eq!(
        cg.controller_dir("cpuacct"),
        Some(root.join("cpu,cpuacct/a/b"))
    );
    assert_eq!(
        cg.controller_dir("systemd"),
        Some(root.join("systemd/user.slice/a/b"))
    );
    assert!(cg.all_dirs().contains(&fake.path().join("unified/u/a/b")));
    // The systemd line's path is relative to a mount exposing only /user.slice.
    let own = parse_proc_cgroup(proc_cgroup);
    assert_eq!(
        own.v1_path_for(&["name=systemd".to_string()], "/user.slice"),
        "/"
    );
}

#[test]
fn v1_create_writes_each_real_hierarchy_once_and_fills_cpuset() {
    let fake = fake_v1("ns/c1");
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    assert!(!cg.is_v2());
    assert_eq!(cg.path(), "/ns/c1");
    let dirs = cg.v1_dirs();
    assert_eq!(dirs.len(), V1_FILES.len(), "{dirs:#?}");
    let root = fs::canonicalize(fake.path()).expect("canon");
    let cpu = dirs
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == "cpu"))
        .expect("cpu hierarchy");
    assert_eq!(cpu.dir, root.join("cpu,cpuacct/ns/c1"));
    assert!(cpu.controllers.iter().any(|c| c == "cpuacct"));
    assert_eq!(get(&root.join("cpuset/ns/cpuset.cpus")), "0-3");
    assert_eq!(get(&root.join("cpuset/ns/c1/cpuset.cpus")), "0-3");
    assert_eq!(get(&root.join("cpuset/ns/c1/cpuset.mems")), "0");
    assert!(fake.path().join("unified/ns/c1").is_dir());

    cg.add_pid(4242).expect("add_pid");
    for d in cg.all_dirs() {
        assert_eq!(get(&d.join("cgroup.procs")), "4242", "{}", d.display());
    }
    assert_eq!(cg.pids().expect("pids"), vec![4242]);
    let opened = Cgroup::open(fake.path(), "/ns/c1").expect("open");
    assert_eq!(opened.all_dirs(), cg.all_dirs());
    let missing = Cgroup::open(fake.path(), "/ns/nope").expect_err("missing");
    assert!(missing.is_not_found(), "{missing}");
}

#[test]
fn v1_apply_writes_expected_values() {
    let fake = fake_v1("ns/c1");
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    let r = resources(json!({
        "memory": {
            "limit": 104857600, "reservation": 52428800, "swap": 209715200,
            "kernelTCP": 1048576, "swappiness": 10, "disableOOMKiller": true
        },
        "cpu": {
            "shares": 512, "quota": 50000, "period": 100000,
            "realtimeRuntime": 950000, "realtimePeriod": 1000000,
            "cpus": "1-2", "mems": "0", "idle": 1
        },
        "pids": {"limit": 42},
        "blockIO": {
            "weight": 300,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 200}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}]
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
        ]
    }));
    cg.apply(&r).expect("apply");
    let root = fs::canonicalize(fake.path()).expect("canon");
    let at = |hier: &str, file: &str| get(&root.join(hier).join("ns/c1").join(file));
    assert_eq!(at("memory", "memory.limit_in_bytes"), "104857600");
    assert_eq!(at("memory", "memory.memsw.limit_in_bytes"), "209715200");
    assert_eq!(at("memory", "memory.soft_limit_in_bytes"), "52428800");
    assert_eq!(at("memory", "memory.kmem.tcp.limit_in_bytes"), "1048576");
    assert_eq!(at("memory", "memory.swappiness"), "10");
    assert_eq!(at("memory", "memory.oom_control"), "1");
    assert_eq!(at("cpu,cpuacct", "cpu.shares"), "512");
    assert_eq!(at("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
    assert_eq!(at("cpu,cpuacct", "cpu.cfs_period_us"), "100000");
    assert_eq!(at("cpu,cpuacct", "cpu.rt_runtime_us"), "950000");
    assert_eq!(at("cpu,cpuacct", "cpu.rt_period_us"), "1000000");
    assert_eq!(at("cpu,cpuacct", "cpu.idle"), "1");
    assert_eq!(at("cpuset", "cpuset.cpus"), "1-2");
    assert_eq!(at("cpuset", "cpuset.mems"), "0");
    assert_eq!(at("pids", "pids.max"), "42");
    assert_eq!(at("blkio", "blkio.weight"), "300");
    assert_eq!(at("blkio", "blkio.weight_device"), "8:0 200");
    assert_eq!(at("blkio", "blkio.throttle.read_bps_device"), "8:0 1048576");
    assert_eq!(at("blkio", "blkio.throttle.write_iops_device"), "8:16 100");
    assert_eq!(at("hugetlb", "hugetlb.2MB.limit_in_bytes"), "4194304");
    assert_eq!(at("net_cls,net_prio", "net_cls.classid"), "1048577");
    assert_eq!(at("net_cls,net_prio", "net_prio.ifpriomap"), "eth0 5");
    // Fake files keep only the last write; the full sequence is tested in devices.rs.
    assert_eq!(at("devices", "devices.deny"), "a");
    assert_eq!(at("devices", "devices.allow"), "c 10:200 rwm");
    // Nothing is written to the hybrid cgroup2 directory.
    let unified: Vec<_> = fs::read_dir(fake.path().join("unified/ns/c1"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(unified, vec![std::ffi::OsString::from("cgroup.procs")]);

    // pids -1 means unlimited; memory -1 with swap unset lifts the memsw limit too.
    cg.apply(&resources(
        json!({"pids": {"limit": -1}, "memory": {"limit": -1}}),
    ))
    .expect("apply unlimited");
    assert_eq!(at("pids", "pids.max"), "max");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "-1");
    assert_eq!(at("memory", "memory.memsw.limit_in_bytes"), "-1");
}

#[test]
fn v1_validation_errors_name_file_and_value() {
    let fake = fake_v1("c");
    let cg = Cgroup::create(fake.path(), "/c").expect("create");
    let err = cg
        .apply(&resources(json!({"memory": {"swappiness": 150}})))
        .expect_err("swappiness > 100");
    let msg = err.to_string();
    assert!(
        msg.contains("memory.swappiness") && msg.contains("150"),
        "{msg}"
    );

    let err = cg
        .apply(&resources(
            json!({"hugepageLimits": [{"pageSize": "../x", "limit": 1}]}),
        ))
        .expect_err("bad page size");
    assert!(err.to_string().contains("../x"), "{err}");

    let err = cg
        .apply(&resources(json!({"unified": {"memory.high": "1G"}})))
        .expect_err("unified on v1");
    assert!(matches!(err, CgroupError::InvalidArgument(_)), "{err}");

    // A kernel-side refusal carries the file and value.
    let root = fs::canonicalize(fake.path()).expect("canon");
    fs::remove_file(root.join("pids/c/pids.max")).expect("rm");
    let err = cg
        .apply(&resources(json!({"pids": {"limit": 7}})))
        .expect_err("missing file");
    let msg = err.to_string();
    assert!(msg.contains("pids.max") && msg.contains("\"7\""), "{msg}");
}

/// A pure v2 host with the given controllers at the root and in "ns", and "ns/c1" holding
/// the interface files those controllers create.
fn fake_v2() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let ctrls = "cpuset cpu io memory hugetlb pids";
    for level in [root.to_path_buf(), root.join("ns")] {
        put(&level.join("cgroup.controllers"), ctrls);
        put(&level.join("cgroup.subtree_control"), "");
        put(&level.join("cgroup.procs"), "");
    }
    let c1 = root.join("ns/c1");
    for f in [
        "cgroup.controllers",
        "cgroup.subtree_control",
        "cgroup.procs",
        "cgroup.freeze",
        "cgroup.kill",
        "cpu.weight",
        "cpu.max",
        "cpu.max.burst",
        "cpu.idle",
        "cpuset.cpus",
        "cpuset.mems",
        "memory.max",
        "memory.low",
        "memory.high",
        "memory.swap.max",
        "pids.max",
        "io.weight",
        "io.max",
        "hugetlb.2MB.max",
    ] {
        put(&c1.join(f), "");
    }
    put(&c1.join("cgroup.events"), "populated 0\nfrozen 0");
    tmp
}

#[test]
fn v2_create_enables_controllers_down_to_parent() {
    let fake = fake_v2();
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    assert!(cg.is_v2());
    let want = "+cpuset +cpu +io +memory +hugetlb +pids";
    assert_eq!(get(&fake.path().join("cgroup.subtree_control")), want);
    assert_eq!(get(&fake.path().join("ns/cgroup.subtree_control")), want);
    // The leaf holds processes, so it must not enable controllers for children.
    assert_eq!(get(&fake.path().join("ns/c1/cgroup.subtree_control")), "");
    assert_eq!(cg.memory_dir(), Some(fake.path().join("ns/c1")));
    cg.add_pid(77).expect("add");
    assert_eq!(cg.pids().expect("pids"), vec![77]);
}

#[test]
fn v2_apply_converts_values() {
    let fake = fake_v2();
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    cg.apply(&resources(json!({
        "memory": {"limit": 104857600, "swap": 314572800, "reservation": 52428800},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 100},
        "blockIO": {
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": -1}],
        "unified": {"memory.high": "90000000"}
    })))
    .expect("apply");
    let at = |f: &str| get(&fake.path().join("ns/c1").join(f));
    assert_eq!(at("memory.max"), "104857600");
    assert_eq!(at("memory.swap.max"), "209715200");
    assert_eq!(at("memory.low"), "52428800");
    assert_eq!(at("cpu.weight"), "39");
    assert_eq!(at("cpu.max"), "50000 100000");
    assert_eq!(at("cpuset.cpus"), "0-1");
    assert_eq!(at("cpuset.mems"), "0");
    assert_eq!(at("pids.max"), "100");
    assert_eq!(at("io.weight"), "4950");
    assert_eq!(at("io.max"), "8:0 rbps=1048576");
    assert_eq!(at("hugetlb.2MB.max"), "max");
    assert_eq!(at("memory.high"), "90000000");

    cg.apply(&resources(json!({
        "memory": {"limit": 104857600, "swap": 104857600},
        "cpu": {"quota": -1, "period": 250000},
        "pids": {"limit": -1}
    })))
    .expect("apply 2");
    assert_eq!(at("memory.swap.max"), "0");
    assert_eq!(at("cpu.max"), "max 250000");
    assert_eq!(at("pids.max"), "max");
}

#[test]
fn v2_errors() {
    let fake = fake_v2();
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    fs::remove_file(fake.path().join("ns/c1/pids.max")).expect("rm");
    let err = cg
        .apply(&resources(json!({"pids": {"limit": 5}})))
        .expect_err("no pids controller");
    assert!(
        matches!(&err, CgroupError::ControllerMissing { controller, .. } if controller == "pids"),
        "{err}"
    );
    let err = cg
        .apply(&resources(json!({"memory": {"limit": 100, "swap": 50}})))
        .expect_err("swap below memory");
    assert!(err.to_string().contains("memory.swap.max"), "{err}");
    for key in ["../x.y", "cgroup.procs", "memory", ".hidden"] {
        let err = cg
            .apply(&resources(json!({"unified": {key: "1"}})))
            .expect_err("bad unified key");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn v2_conversions() {
    assert_eq!(v2::shares_to_weight(2), 1);
    assert_eq!(v2::shares_to_weight(1024), 39);
    assert_eq!(v2::shares_to_weight(262_144), 10_000);
    assert_eq!(v2::shares_to_weight(1), 1);
    assert_eq!(v2::shares_to_weight(1_000_000), 10_000);
    assert_eq!(v2::blkio_to_io_weight(10), 1);
    assert_eq!(v2::blkio_to_io_weight(1000), 10_000);
    assert_eq!(v2::swap_max(-1, 0).expect("ok"), Some("max".into()));
    assert_eq!(v2::swap_max(100, 0).expect("ok"), None);
    assert_eq!(v2::swap_max(100, -1).expect("ok"), Some("max".into()));
    assert_eq!(v2::swap_max(100, 300).expect("ok"), Some("200".into()));
    assert_eq!(v2::swap_max(100, 100).expect("ok"), Some("0".into()));
    assert!(v2::swap_max(0, 100).is_err());
    assert!(v2::swap_max(-1, 100).is_err());
    assert_eq!(v2::cpu_max(0, 0), None);
    assert_eq!(v2::cpu_max(20000, 0), Some("20000".into()));
    assert_eq!(v2::cpu_max(0, 50000), Some("max 50000".into()));
}

#[test]
fn v2_freeze_waits_for_events() {
    let fake = fake_v2();
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    let events = fake.path().join("ns/c1/cgroup.events");
    let ev = events.clone();
    // Stand in for the kernel, reporting the frozen state a little later.
    let kernel = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        put(&ev, "populated 1\nfrozen 1");
    });
    cg.freeze().expect("freeze");
    kernel.join().expect("join");
    assert!(cg.is_frozen());
    assert_eq!(get(&fake.path().join("ns/c1/cgroup.freeze")), "1");
    put(&events, "populated 1\nfrozen 0");
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen());
    cg.kill_all(libc::SIGKILL).expect("kill via cgroup.kill");
    assert_eq!(get(&fake.path().join("ns/c1/cgroup.kill")), "1");
}

// ---------------------------------------------------------------------------------------
// Real cgroups.

const SYS_CGROUP: &str = "/sys/fs/cgroup";

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "container-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Kills the test's children and removes `<root>/<name>` and `<root>/*/<name>` however the
/// test ends, thawing first so nothing stays stuck in a frozen cgroup.
struct Guard {
    name: String,
    roots: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Guard {
    fn new(name: &str, root: &Path) -> Guard {
        Guard {
            name: name.to_string(),
            roots: vec![root.to_path_buf()],
            children: Vec::new(),
        }
    }

    fn candidate_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for root in &self.roots {
            dirs.push(root.join(&self.name));
            for e in fs::read_dir(root).into_iter().flatten().flatten() {
                dirs.push(e.path().join(&self.name));
            }
        }
        dirs.retain(|d| d.is_dir());
        dirs
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let dirs = self.candidate_dirs();
        for d in &dirs {
            let _ = fs::write(d.join("freezer.state"), "THAWED");
            let _ = fs::write(d.join("cgroup.freeze"), "0");
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &dirs {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn spawn(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("spawn sh")
}

/// Moves the child into the cgroup before exec, so the script runs under its rules from the
/// first instruction. Only async-signal-safe calls happen after fork.
fn spawn_in(procs: &Path, script: &str) -> Child {
    let path = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("cstring");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    // SAFETY: the closure only calls open/write/close on pre-allocated data.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn sh in cgroup")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

fn proc_state(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Asserts the busy-looping process makes no progress while frozen and resumes after thaw.
fn check_freeze_stops_cpu(cg: &Cgroup, pid: u32) {
    // Let it accumulate some CPU first so "resumes" is measurable.
    std::thread::sleep(Duration::from_millis(100));
    cg.freeze().expect("freeze");
    assert!(cg.is_frozen());
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(pid), before, "frozen process kept running");
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen());
    let deadline = Instant::now() + Duration::from_secs(5);
    while cpu_ticks(pid) == before {
        assert!(Instant::now() < deadline, "thawed process did not run");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn real_v1_host() -> bool {
    if !is_root() || !Path::new("/sys/fs/cgroup/freezer/cgroup.procs").exists() {
        eprintln!("skipping: needs root and a cgroup v1 host");
        return false;
    }
    matches!(detect(Path::new(SYS_CGROUP)), Layout::Legacy { .. })
}

#[test]
fn real_v1_lifecycle() {
    if !real_v1_host() {
        return;
    }
    let name = unique_name();
    let mut guard = Guard::new(&name, Path::new(SYS_CGROUP));
    let cg = Cgroup::create(Path::new(SYS_CGROUP), &format!("/{name}")).expect("create");
    let dirs = cg.all_dirs();
    for h in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    ] {
        let d = Path::new(SYS_CGROUP).join(h).join(&name);
        if Path::new(SYS_CGROUP).join(h).exists() {
            assert!(d.is_dir(), "{} missing", d.display());
        }
    }
    if let Layout::Legacy { unified: Some(u) } = detect(Path::new(SYS_CGROUP)) {
        assert!(dirs.contains(&u.join(&name)));
        assert!(u.join(&name).is_dir());
    }
    let memdir = cg.memory_dir().expect("memory hierarchy");
    assert_eq!(memdir, Path::new("/sys/fs/cgroup/memory").join(&name));
    let cpuset = cg.controller_dir("cpuset").expect("cpuset");
    assert!(!get(&cpuset.join("cpuset.cpus")).is_empty());

    cg.apply(&resources(json!({
        "memory": {"limit": 67108864, "swap": 134217728},
        "pids": {"limit": 32},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000}
    })))
    .expect("apply");
    assert_eq!(get(&memdir.join("memory.limit_in_bytes")), "67108864");
    if memdir.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            get(&memdir.join("memory.memsw.limit_in_bytes")),
            "134217728"
        );
    }
    let pidsdir = cg.controller_dir("pids").expect("pids");
    assert_eq!(get(&pidsdir.join("pids.max")), "32");
    let cpudir = cg.controller_dir("cpu").expect("cpu");
    assert_eq!(get(&cpudir.join("cpu.shares")), "512");
    assert_eq!(get(&cpudir.join("cpu.cfs_quota_us")), "20000");

    // Updates in both directions must order the memory and memsw writes correctly.
    cg.apply(&resources(
        json!({"memory": {"limit": 268435456, "swap": 536870912}}),
    ))
    .expect("raise");
    assert_eq!(get(&memdir.join("memory.limit_in_bytes")), "268435456");
    cg.apply(&resources(
        json!({"memory": {"limit": 33554432, "swap": 67108864}}),
    ))
    .expect("lower");
    assert_eq!(get(&memdir.join("memory.limit_in_bytes")), "33554432");

    let err = cg
        .apply(&resources(json!({"cpu": {"cpus": "100000"}})))
        .expect_err("bad cpuset");
    assert!(
        err.to_string().contains("cpuset.cpus") && err.to_string().contains("100000"),
        "{err}"
    );

    guard.children.push(spawn("while :; do :; done"));
    let pid = guard.children[0].id();
    cg.add_pid(pid).expect("add_pid");
    assert!(cg.pids().expect("pids").contains(&pid));
    let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        proc_cgroup.contains(&format!(":memory:/{name}"))
            && proc_cgroup.contains(&format!(":freezer:/{name}")),
        "{proc_cgroup}"
    );

    cg.freeze().expect("freeze");
    let freezer = cg.controller_dir("freezer").expect("freezer");
    assert_eq!(get(&freezer.join("freezer.state")), "FROZEN");
    let state = proc_state(pid);
    assert!(state.starts_with('D'), "frozen task state {state:?}");
    cg.thaw().expect("thaw");
    assert_eq!(get(&freezer.join("freezer.state")), "THAWED");
    check_freeze_stops_cpu(&cg, pid);

    // A paused (frozen) container: SIGKILL must still kill it, which on v1 takes a thaw.
    cg.freeze().expect("freeze before kill");
    cg.kill_all(libc::SIGKILL).expect("kill_all");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = guard.children[0].try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "SIGKILL did not kill a task of the frozen cgroup (left frozen: {})",
            cg.is_frozen()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!cg.is_frozen(), "kill_all must leave the cgroup thawed");

    let reopened = Cgroup::open(Path::new(SYS_CGROUP), &format!("/{name}")).expect("open");
    assert_eq!(reopened.all_dirs(), dirs);
    cg.delete().expect("delete");
    for d in &dirs {
        assert!(!d.exists(), "{} still exists", d.display());
    }
    cg.delete().expect("second delete is a no-op");
    assert!(Cgroup::open(Path::new(SYS_CGROUP), &format!("/{name}"))
        .expect_err("gone")
        .is_not_found());
}

#[test]
fn real_v1_devices_allow_list_and_update() {
    if !real_v1_host() || !Path::new("/dev/kmsg").exists() {
        return;
    }
    let name = unique_name();
    let mut guard = Guard::new(&name, Path::new(SYS_CGROUP));
    let cg = Cgroup::create(Path::new(SYS_CGROUP), &format!("/{name}")).expect("create");
    let devdir = cg.controller_dir("devices").expect("devices hierarchy");
    cg.apply(&resources(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
    ]})))
    .expect("apply devices");
    let list = get(&devdir.join("devices.list"));
    let lines: Vec<&str> = list.lines().collect();
    for want in [
        "c 10:229 rw",
        "c 1:3 rwm",
        "c *:* m",
        "b *:* m",
        "c 136:* rwm",
    ] {
        assert!(lines.contains(&want), "{want:?} not in {list}");
    }
    assert!(!lines.contains(&"a *:* rwm"), "{list}");

    // Redirection errors would end the whole (dash) shell, hence the subshells.
    let script = "(: </dev/null) || exit 10; (: </dev/kmsg) 2>/dev/null && exit 11; exit 0";
    guard
        .children
        .push(spawn_in(&devdir.join("cgroup.procs"), script));
    let status = guard.children[0].wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "device rules not enforced: {status:?}"
    );

    // An update only adjusts the exceptions that change.
    cg.apply(&resources(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}
    ]})))
    .expect("update devices");
    let list = get(&devdir.join("devices.list"));
    assert!(list.lines().any(|l| l == "c 1:11 r"), "{list}");
    assert!(!list.lines().any(|l| l.starts_with("c 10:229")), "{list}");
    guard
        .children
        .push(spawn_in(&devdir.join("cgroup.procs"), "exec 3</dev/kmsg"));
    let status = guard.children[1].wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "kmsg should be readable now: {status:?}"
    );

    cg.delete().expect("delete");
}

/// The hybrid host's cgroup2 mount is a complete (controller-less) v2 hierarchy, so the v2
/// paths that need no controllers run for real there: membership, freeze, kill, eBPF devices.
#[test]
fn real_v2_on_unified_mount() {
    let root = Path::new("/sys/fs/cgroup/unified");
    if !is_root() || detect(root) != Layout::Unified {
        eprintln!("skipping: needs root and cgroup2 at {}", root.display());
        return;
    }
    let name = unique_name();
    let mut guard = Guard::new(&name, root);
    let cg = Cgroup::resolve(root, &format!("/{name}"), "", "").expect("resolve");
    // Do not enable controllers in the shared mount's root subtree_control.
    cg.make_dirs(false).expect("mkdir");
    assert!(cg.is_v2());
    let dir = root.join(&name);
    assert!(dir.is_dir());

    // Devices via eBPF.
    cg.apply(&resources(
        json!({"devices": [{"allow": false, "access": "rwm"}]}),
    ))
    .expect("devices");
    assert_eq!(ebpf::attached_count(&dir).expect("query"), 1);
    cg.apply(&resources(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
    ]})))
    .expect("devices update");
    assert_eq!(
        ebpf::attached_count(&dir).expect("query"),
        1,
        "update must replace the program"
    );
    if Path::new("/dev/kmsg").exists() {
        let script = "(: </dev/null) || exit 10; (: </dev/zero) || exit 12; \
                      (: </dev/kmsg) 2>/dev/null && exit 11; exit 0";
        guard
            .children
            .push(spawn_in(&dir.join("cgroup.procs"), script));
        let status = guard.children[0].wait().expect("wait");
        assert_eq!(status.code(), Some(0), "eBPF device filter: {status:?}");
    }
    // Read-only access to kmsg: reading allowed, opening for write denied.
    cg.apply(&resources(json!({"devices": [
        {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}
    ]})))
    .expect("devices update 2");
    // Only meaningful where this process may open kmsg for writing outside the cgroup.
    let baseline = spawn("(: </dev/kmsg) && (: >/dev/kmsg)")
        .wait()
        .expect("wait");
    if baseline.success() {
        let script = "(: </dev/kmsg) || exit 10; (: >/dev/kmsg) 2>/dev/null && exit 11; exit 0";
        guard
            .children
            .push(spawn_in(&dir.join("cgroup.procs"), script));
        let idx = guard.children.len() - 1;
        let status = guard.children[idx].wait().expect("wait");
        assert_eq!(status.code(), Some(0), "partial access: {status:?}");
    }

    // No pids controller on this mount: a clear error rather than ENOENT.
    let err = cg
        .apply(&resources(json!({"pids": {"limit": 10}})))
        .expect_err("pids controller absent");
    assert!(
        matches!(&err, CgroupError::ControllerMissing { controller, .. } if controller == "pids"),
        "{err}"
    );

    guard.children.push(spawn("while :; do :; done"));
    let idx = guard.children.len() - 1;
    let pid = guard.children[idx].id();
    cg.add_pid(pid).expect("add_pid");
    assert_eq!(cg.pids().expect("pids"), vec![pid]);
    cg.freeze().expect("freeze");
    assert!(get(&dir.join("cgroup.events")).contains("frozen 1"));
    cg.thaw().expect("thaw");
    check_freeze_stops_cpu(&cg, pid);

    // Not SIGKILL: goes through freeze, signal, thaw.
    cg.kill_all(libc::SIGTERM).expect("kill_all TERM");
    let status = guard.children[idx].wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!cg.is_frozen());

    guard.children.push(spawn("exec sleep 30"));
    let idx = guard.children.len() - 1;
    cg.add_pid(guard.children[idx].id()).expect("add_pid");
    cg.kill_all(libc::SIGKILL).expect("cgroup.kill");
    let status = guard.children[idx].wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    cg.delete().expect("delete");
    assert!(!dir.exists());
}

#[test]
fn kill_all_rejects_bad_signal() {
    let fake = fake_v2();
    let cg = Cgroup::create(fake.path(), "/ns/c1").expect("create");
    let err = cg.kill_all(1000).expect_err("bad signal");
    assert!(err.to_string().contains("1000"), "{err}");
}
