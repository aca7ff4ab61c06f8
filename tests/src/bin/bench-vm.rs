//! The VM shim beside containerd's Go shim `io.containerd.runc.v2` (runc), on one private
//! containerd: `ctr run --rm` of `true`, create-to-running (`ctr run -d`), the VM's
//! boot-to-agent-ready (the shim's own log), exec latency, stdout throughput (of `ctr run --rm`,
//! boot included, and of `ctr task exec` in a running container), and host memory
//! per idle VM (QEMU plus the shim, PSS). Pairs alternate, ours then Go's; the ratio column is
//! the median of per-pair ratios.
//!
//! `cargo run --release -p shim-e2e --bin bench-vm` (as root, with the guest image built:
//! `scripts/bench.sh vm` does both). `BENCH_N` (default 10) pairs for latencies,
//! `BENCH_ROUNDS` (default 3) for memory and throughput, `BENCH_JSON=FILE` for JSON output.
//! Memory is measured for one idle VM at a time, and for `BENCH_IDLE` (default 3) idle VMs at
//! once (the sum over their shim trees, divided by their number): VMs restored from one
//! template share the pages of its memory file they only read, which PSS divides among them.
//! `BENCH_SMAPS=1` also prints where an idle VM's QEMU memory goes (its smaps, by mapping).

use std::time::Duration;

use serde_json::json;
use shim_e2e::bench::{self, median, ratios};
use shim_e2e::{Ctx, PrivateContainerd, Variant, IMAGE};

const MIB: f64 = 1024.0 * 1024.0;
const STDOUT_BYTES: u64 = 128 << 20;

struct Metric {
    name: &'static str,
    unit: &'static str,
    ours: Vec<f64>,
    go: Vec<f64>,
    goal: &'static str,
}

impl Metric {
    fn new(name: &'static str, unit: &'static str, goal: &'static str) -> Metric {
        Metric {
            name,
            unit,
            ours: Vec::new(),
            go: Vec::new(),
            goal,
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The shim's own account of the boot of the VM for `id` (QEMU started → agent answered).
fn boot_ms(ctx: &Ctx, from: u64, id: &str) -> Option<f64> {
    let log = ctx.daemon.log_since(from);
    let marker = format!("VM for {id} up (");
    let line = log.lines().rev().find(|l| l.contains(&marker))?;
    let rest = &line[line.find(&marker)? + marker.len()..];
    let after = rest.split(") in ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// QEMU's smaps summed by mapping (file, or anonymous by size), largest PSS first: where an
/// idle VM's memory goes.
fn print_smaps(pid: u32) {
    use std::collections::HashMap;
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return;
    };
    let mut by: HashMap<String, [u64; 3]> = HashMap::new();
    let mut key = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            let (lo, hi) = first.split_once('-').unwrap_or(("0", "0"));
            let size =
                u64::from_str_radix(hi, 16).unwrap_or(0) - u64::from_str_radix(lo, 16).unwrap_or(0);
            key = match f.nth(4) {
                Some(name) => name.to_string(),
                None if size >= 64 << 20 => format!("[anon {} MiB]", size >> 20),
                None => "[anon, small]".to_string(),
            };
            continue;
        }
        let slot = match first {
            "Rss:" => 0,
            "Pss:" => 1,
            "Anonymous:" => 2,
            _ => continue,
        };
        let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        by.entry(key.clone()).or_default()[slot] += kib;
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1[1].cmp(&a.1[1]));
    println!("# QEMU {pid} smaps, KiB: Rss Pss Anonymous");
    for (name, [rss, pss, anon]) in rows.iter().take(10) {
        println!("#   {rss:>8} {pss:>8} {anon:>8}  {name}");
    }
}

fn main() {
    bench::exit_cleanly_on_panic_and_signals();
    let n = env_usize("BENCH_N", 10).max(1);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let d = PrivateContainerd::shared();
    bench::remove_oci_wrappers(&d.bin_dir);
    let load_before = bench::loadavg();
    let ours = Ctx::new("bench-vm", Variant::VmName);
    let go = Ctx::new("bench-vm", Variant::RuncV2Reference);
    let header = format!(
        "containerd {}, QEMU {}, kernel {}, {} CPUs, load {load_before}; BENCH_N={n} BENCH_ROUNDS={rounds}",
        bench::server_version(d),
        bench::first_line_of("qemu-system-x86_64", &["--version"]),
        bench::first_line_of("uname", &["-r"]),
        std::thread::available_parallelism().map_or(0, |p| p.get()),
    );
    println!("# {header}");

    let mut run_rm = Metric::new("ctr run --rm IMAGE id true", "ms", "");
    let mut running = Metric::new("ctr run -d (create + start, running)", "ms", "<= 1500");
    let mut boot = Metric::new("VM boot to agent ready (shim log)", "ms", "");
    let mut exec = Metric::new("ctr task exec true", "ms", "<= 50");
    let mut pss = Metric::new("host PSS per idle container (shim tree)", "MiB", "<= 160");
    let mut rss = Metric::new("host RSS per idle container (shim tree)", "MiB", "");
    let idle = env_usize("BENCH_IDLE", 3).max(1);
    let mut pss_many = Metric::new("host PSS per idle ctr, BENCH_IDLE at once", "MiB", "<= 160");
    let mut tput = Metric::new("stdout 128 MiB via ctr run --rm", "MiB/s", ">= 100");
    // The same bytes from a running container: the stream alone, without the VM's boot and
    // shutdown, which `ctr run --rm` counts in.
    let mut tput_exec = Metric::new("stdout 128 MiB via ctr task exec", "MiB/s", "");

    println!("# ctr run --rm, ctr run -d, boot");
    for i in 0..n + 1 {
        let id = format!("r{i}");
        let warm = i == 0;
        for (ctx, side) in [(&ours, 0), (&go, 1)] {
            let out = ctx.ctr(&ctx.run_args(&["--rm"], IMAGE, &id, &["true"]));
            ctx.check(&out, "ctr run --rm true");
            let from = d.log_offset();
            let rid = format!("d{i}");
            let started = ctx.ctr(&ctx.run_args(&["-d"], IMAGE, &rid, &["sleep", "100000"]));
            ctx.check(&started, "ctr run -d");
            if !warm {
                let (a, b) = if side == 0 {
                    (&mut run_rm.ours, &mut running.ours)
                } else {
                    (&mut run_rm.go, &mut running.go)
                };
                a.push(ms(out.elapsed));
                b.push(ms(started.elapsed));
                if side == 0 {
                    if let Some(b) = boot_ms(ctx, from, &rid) {
                        boot.ours.push(b);
                    }
                }
            }
            ctx.kill_and_remove(&rid);
        }
    }

    println!("# exec");
    ours.run_sleeper("x");
    go.run_sleeper("x");
    for i in 0..n + 2 {
        let exec_id = format!("e{i}");
        for (ctx, v) in [(&ours, &mut exec.ours), (&go, &mut exec.go)] {
            let out = ctx.exec("x", &exec_id, &[], &["true"]);
            ctx.check(&out, "ctr task exec true");
            if i >= 2 {
                v.push(ms(out.elapsed));
            }
        }
    }
    ours.kill_and_remove("x");
    go.kill_and_remove("x");

    println!("# memory");
    for r in 0..rounds {
        let id = format!("m{r}");
        for ctx in [&ours, &go] {
            ctx.run_sleeper(&id);
            std::thread::sleep(Duration::from_secs(2));
            let shim = ctx.shim_pid(&id);
            let m = bench::memory_of(&bench::shim_tree(shim, &ctx.cgroup_rel(&id)));
            if r == 0 && ctx.variant.is_vm() && std::env::var("BENCH_SMAPS").as_deref() == Ok("1") {
                for q in ctx.qemu_children(shim) {
                    print_smaps(q);
                }
            }
            let (p, s) = if ctx.variant.is_vm() {
                (&mut pss.ours, &mut rss.ours)
            } else {
                (&mut pss.go, &mut rss.go)
            };
            p.push(m.pss_kib as f64 / 1024.0);
            s.push(m.rss_kib as f64 / 1024.0);
            ctx.kill_and_remove(&id);
        }
    }

    println!("# memory, {idle} idle at once");
    for r in 0..rounds {
        for ctx in [&ours, &go] {
            let ids: Vec<String> = (0..idle).map(|i| format!("n{r}-{i}")).collect();
            for id in &ids {
                ctx.run_sleeper(id);
            }
            std::thread::sleep(Duration::from_secs(2));
            let mut total = 0.0;
            for id in &ids {
                let shim = ctx.shim_pid(id);
                let m = bench::memory_of(&bench::shim_tree(shim, &ctx.cgroup_rel(id)));
                total += m.pss_kib as f64 / 1024.0;
            }
            let v = if ctx.variant.is_vm() {
                &mut pss_many.ours
            } else {
                &mut pss_many.go
            };
            v.push(total / idle as f64);
            for id in &ids {
                ctx.kill_and_remove(id);
            }
        }
    }

    println!("# stdout throughput");
    let cmd = format!(
        "dd if=/dev/zero bs=1M count={} 2>/dev/null",
        STDOUT_BYTES >> 20
    );
    for r in 0..rounds {
        let id = format!("o{r}");
        for ctx in [&ours, &go] {
            let argv = ctx.ctr_argv(&ctx.run_args(&["--rm"], IMAGE, &id, &["sh", "-c", &cmd]));
            let out = bench::run_counting_stdout(&argv, Duration::from_secs(300));
            if out.code != 0 {
                ctx.fail(format!("128 MiB run failed\n{}", out.describe()));
            }
            let v = STDOUT_BYTES as f64 / MIB / out.elapsed.as_secs_f64();
            if ctx.variant.is_vm() {
                tput.ours.push(v);
            } else {
                tput.go.push(v);
            }
        }
    }
    for ctx in [&ours, &go] {
        ctx.run_sleeper("t");
        for r in 0..rounds {
            let exec_id = format!("dd{r}");
            let argv = ctx.ctr_argv(&ctx.exec_args("t", &exec_id, &[], &["sh", "-c", &cmd]));
            let out = bench::run_counting_stdout(&argv, Duration::from_secs(300));
            if out.code != 0 || out.stdout_bytes != STDOUT_BYTES {
                ctx.fail(format!("128 MiB exec failed\n{}", out.describe()));
            }
            let v = STDOUT_BYTES as f64 / MIB / out.elapsed.as_secs_f64();
            if ctx.variant.is_vm() {
                tput_exec.ours.push(v);
            } else {
                tput_exec.go.push(v);
            }
        }
        ctx.kill_and_remove("t");
    }

    let metrics = [
        &run_rm, &running, &boot, &exec, &pss, &rss, &pss_many, &tput, &tput_exec,
    ];
    println!(
        "\n{:<46} {:>12} {:>12} {:>8} {:>10}",
        "metric (median)", "ours: vm", "Go: runc.v2", "ours/Go", "goal"
    );
    println!("{}", "-".repeat(92));
    for m in metrics {
        let ratio = if m.go.is_empty() {
            f64::NAN
        } else {
            median(&ratios(&m.ours, &m.go))
        };
        println!(
            "{:<46} {:>12.1} {:>12.1} {:>8.2} {:>10}",
            format!("{} [{}]", m.name, m.unit),
            median(&m.ours),
            if m.go.is_empty() {
                f64::NAN
            } else {
                median(&m.go)
            },
            ratio,
            m.goal
        );
    }
    let load_after = bench::loadavg();
    println!("# load before {load_before}, after {load_after}");
    drop(ours);
    drop(go);
    d.teardown();
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let doc = json!({
            "environment": header,
            "load_before": load_before,
            "load_after": load_after,
            "metrics": metrics.iter().map(|m| json!({
                "metric": m.name, "unit": m.unit, "goal": m.goal,
                "ours": m.ours, "go": m.go,
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).expect("JSON encoding");
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("bench-vm: writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
