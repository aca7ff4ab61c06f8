//! Side-by-side benchmark of one of our shims (`BENCH_OURS`, default the oci
//! shim with runc) and containerd's reference Go shim `io.containerd.runc.v2`
//! (with runc), both on one private containerd, each in its own namespace.
//! Every metric is measured in pairs, ours then Go's, alternating, so drift in
//! the machine's load hits both alike; the ratio column is the median of the
//! per-pair ratios.
//!
//! `cargo run --release -p shim-e2e --bin bench` (as root; `scripts/bench.sh`
//! builds everything first). Environment:
//! * `BENCH_N` (default 20): pairs for the `ctr run --rm` and exec latencies;
//! * `BENCH_ROUNDS` (default 5): pairs for memory, throughput and the 20
//!   concurrent starts;
//! * `BENCH_JSON=FILE`: also write the results there as JSON.

use std::time::{Duration, Instant};

use serde_json::json;
use shim_e2e::bench::{self, median, ratios, Memory};
use shim_e2e::util::wait_for;
use shim_e2e::{Ctx, PrivateContainerd, Variant, IMAGE};

const MIB: f64 = 1024.0 * 1024.0;
const STDOUT_BYTES: u64 = 128 << 20;
const CONCURRENT: usize = 20;

struct Metric {
    name: &'static str,
    unit: &'static str,
    lower_is_better: bool,
    ours: Vec<f64>,
    go: Vec<f64>,
    note: String,
}

impl Metric {
    fn new(name: &'static str, unit: &'static str, lower_is_better: bool) -> Metric {
        Metric {
            name,
            unit,
            lower_is_better,
            ours: Vec::new(),
            go: Vec::new(),
            note: String::new(),
        }
    }

    fn ratio(&self) -> f64 {
        median(&ratios(&self.ours, &self.go))
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "metric": self.name,
            "unit": self.unit,
            "lower_is_better": self.lower_is_better,
            "ours": median(&self.ours),
            "go": median(&self.go),
            "ratio_ours_over_go": self.ratio(),
            "ours_samples": self.ours,
            "go_samples": self.go,
            "note": self.note,
        })
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Both sides, ours first: the order every pair is measured in.
struct Sides {
    ours: Ctx,
    go: Ctx,
}

impl Sides {
    /// Measure `f` once per side, ours then Go's, into `m`.
    fn pair(&self, m: &mut Metric, mut f: impl FnMut(&Ctx) -> f64) {
        m.ours.push(f(&self.ours));
        m.go.push(f(&self.go));
    }
}

/// The shim of container `id` and its helpers, without the container.
fn shim_memory(ctx: &Ctx, id: &str) -> Memory {
    let shim = ctx.shim_pid(id);
    bench::memory_of(&bench::shim_tree(shim, &ctx.cgroup_rel(id)))
}

/// Start `ids` as idle `sleep` containers, `threads` `ctr run -d` at a time.
fn start_all(ctx: &Ctx, ids: &[String], threads: usize) {
    std::thread::scope(|s| {
        for chunk in ids.chunks(ids.len().div_ceil(threads)) {
            s.spawn(move || {
                for id in chunk {
                    let out = ctx.ctr(&ctx.run_args(&["-d"], IMAGE, id, &["sleep", "100000"]));
                    ctx.check(&out, &format!("ctr run -d {id}"));
                }
            });
        }
    });
}

/// Kill and delete every task and container of `ids`, four at a time.
fn remove_all(ctx: &Ctx, ids: &[String]) {
    std::thread::scope(|s| {
        for chunk in ids.chunks(ids.len().div_ceil(4)) {
            s.spawn(move || {
                for id in chunk {
                    ctx.kill_and_remove(id);
                }
            });
        }
    });
}

fn wait_all_running(ctx: &Ctx, n: usize) {
    let ok = wait_for(Duration::from_secs(60), Duration::from_millis(20), || {
        let tasks = ctx.tasks();
        (tasks.iter().filter(|t| t.status == "RUNNING").count() == n).then_some(())
    });
    if ok.is_none() {
        ctx.fail(format!("not all {n} RUNNING: {:?}", ctx.tasks()));
    }
}

fn run_rm_latency(s: &Sides, n: usize, m: &mut Metric) {
    // Two unmeasured runs per side: page cache, first-use paths.
    for i in 0..n + 2 {
        let id = format!("r{i}");
        let once = |ctx: &Ctx| {
            let out = ctx.ctr(&ctx.run_args(&["--rm"], IMAGE, &id, &["true"]));
            ctx.check(&out, "ctr run --rm true");
            ms(out.elapsed)
        };
        if i < 2 {
            once(&s.ours);
            once(&s.go);
        } else {
            s.pair(m, once);
        }
    }
}

fn exec_latency(s: &Sides, n: usize, m: &mut Metric) {
    s.ours.run_sleeper("x");
    s.go.run_sleeper("x");
    for i in 0..n + 2 {
        let exec_id = format!("e{i}");
        let once = |ctx: &Ctx| {
            let out = ctx.exec("x", &exec_id, &[], &["true"]);
            ctx.check(&out, "ctr task exec true");
            ms(out.elapsed)
        };
        if i < 2 {
            once(&s.ours);
            once(&s.go);
        } else {
            s.pair(m, once);
        }
    }
    s.ours.kill_and_remove("x");
    s.go.kill_and_remove("x");
}

/// One idle container: RSS, PSS and threads of its shim tree.
fn memory_one(s: &Sides, rounds: usize, m: [&mut Metric; 4]) {
    let [rss, pss, anon, thr] = m;
    for r in 0..rounds {
        let id = format!("m{r}");
        let mut samples = Vec::new();
        for ctx in [&s.ours, &s.go] {
            ctx.run_sleeper(&id);
            std::thread::sleep(Duration::from_secs(1));
            samples.push(shim_memory(ctx, &id));
            ctx.kill_and_remove(&id);
        }
        let (o, g) = (samples[0], samples[1]);
        rss.ours.push(o.rss_kib as f64 / 1024.0);
        rss.go.push(g.rss_kib as f64 / 1024.0);
        pss.ours.push(o.pss_kib as f64 / 1024.0);
        pss.go.push(g.pss_kib as f64 / 1024.0);
        anon.ours.push(o.anon_kib as f64 / 1024.0);
        anon.go.push(g.anon_kib as f64 / 1024.0);
        thr.ours.push(o.threads as f64);
        thr.go.push(g.threads as f64);
        if r == 0 {
            let procs = format!(
                "shim tree processes: ours {}, Go {}",
                o.processes, g.processes
            );
            rss.note = procs.clone();
            pss.note = format!(
                "{procs}; PSS splits the binary's pages among all processes mapping it, so \
                 other shims running on the host lower it (anonymous memory does not depend on that)"
            );
        }
    }
}

/// Ten idle containers, each with its own shim: PSS and RSS summed / 10.
fn memory_ten(s: &Sides, rounds: usize, rss: &mut Metric, pss: &mut Metric) {
    for r in 0..rounds {
        let ids: Vec<String> = (0..10).map(|i| format!("t{r}-{i}")).collect();
        let mut per = Vec::new();
        for ctx in [&s.ours, &s.go] {
            start_all(ctx, &ids, 2);
            std::thread::sleep(Duration::from_secs(1));
            let mut sum = Memory::default();
            for id in &ids {
                sum += shim_memory(ctx, id);
            }
            per.push(sum);
            remove_all(ctx, &ids);
        }
        rss.ours.push(per[0].rss_kib as f64 / 10.0 / 1024.0);
        rss.go.push(per[1].rss_kib as f64 / 10.0 / 1024.0);
        pss.ours.push(per[0].pss_kib as f64 / 10.0 / 1024.0);
        pss.go.push(per[1].pss_kib as f64 / 10.0 / 1024.0);
    }
}

/// 128 MiB written to stdout by the container, read by ctr, counted by us.
fn throughput(s: &Sides, rounds: usize, m: &mut Metric) {
    let mut short = [0usize; 2];
    // Not `head -c N /dev/zero`: busybox head copies in small blocks and
    // alone tops out near 160 MiB/s here, which would measure busybox.
    let cmd = format!(
        "dd if=/dev/zero bs=1M count={} 2>/dev/null",
        STDOUT_BYTES >> 20
    );
    for r in 0..rounds {
        let id = format!("o{r}");
        let mut side = 0;
        s.pair(m, |ctx| {
            let argv = ctx.ctr_argv(&ctx.run_args(&["--rm"], IMAGE, &id, &["sh", "-c", &cmd]));
            let out = bench::run_counting_stdout(&argv, Duration::from_secs(300));
            if out.code != 0 {
                ctx.fail(format!("128 MiB run failed\n{}", out.describe()));
            }
            if out.stdout_bytes != STDOUT_BYTES {
                short[side] += 1;
            }
            side += 1;
            STDOUT_BYTES as f64 / MIB / out.elapsed.as_secs_f64()
        });
    }
    if short != [0, 0] {
        m.note = format!(
            "runs where ctr printed less than 128 MiB (ctr 1.6 stops reading at the exit): ours {}, Go {}",
            short[0], short[1]
        );
    }
}

/// 20 `ctr run -d` at once; seconds until all are RUNNING. Cleanup untimed.
fn concurrent_starts(s: &Sides, rounds: usize, m: &mut Metric) {
    for r in 0..rounds {
        let ids: Vec<String> = (0..CONCURRENT).map(|i| format!("c{r}-{i}")).collect();
        s.pair(m, |ctx| {
            let t0 = Instant::now();
            start_all(ctx, &ids, CONCURRENT);
            wait_all_running(ctx, CONCURRENT);
            let secs = t0.elapsed().as_secs_f64();
            remove_all(ctx, &ids);
            secs
        });
    }
}

/// Our side as the table's column heading (`ours: process`, `ours: oci+runc`) and as the JSON's
/// description.
fn describe_ours(v: Variant) -> (String, String) {
    if v.is_process() {
        (
            "ours: process".into(),
            "containerd-shim-process-v1 (io.containerd.runtime.v2.process), no runtime binary"
                .into(),
        )
    } else if v.is_vm() {
        (
            "ours: vm".into(),
            "containerd-shim-vm-v1 (io.containerd.runtime.v2.vm)".into(),
        )
    } else {
        let oci = v.oci_runtime().unwrap_or("runc");
        (
            format!("ours: oci+{oci}"),
            format!("containerd-shim-oci-v1 (io.containerd.runtime.v2.oci) + {oci}"),
        )
    }
}

fn print_table(ours_h: &str, metrics: &[&Metric]) {
    let go_h = "Go: runc.v2";
    println!(
        "\n{:<46} {:>14} {:>14} {:>8} {:>4}",
        "metric (median)", ours_h, go_h, "ours/Go", "n"
    );
    println!("{}", "-".repeat(90));
    for m in metrics {
        println!(
            "{:<46} {:>14.2} {:>14.2} {:>8.2} {:>4}",
            format!("{} [{}]", m.name, m.unit),
            median(&m.ours),
            median(&m.go),
            m.ratio(),
            m.ours.len()
        );
    }
    println!("{}", "-".repeat(90));
    println!("ours/Go is the median of per-pair ratios: below 1 is better for ours, except");
    println!("throughput (above 1 = ours faster).");
    for m in metrics.iter().filter(|m| !m.note.is_empty()) {
        println!("note, {}: {}", m.name, m.note);
    }
}

fn main() {
    bench::exit_cleanly_on_panic_and_signals();
    let started = Instant::now();
    let n = env_usize("BENCH_N", 20).max(1);
    let rounds = env_usize("BENCH_ROUNDS", 5).max(1);
    let d = PrivateContainerd::shared();
    bench::remove_oci_wrappers(&d.bin_dir);
    let load_before = bench::loadavg();
    // BENCH_OURS picks our side: oci-runc-name (default) or process-name.
    let ours = std::env::var("BENCH_OURS").unwrap_or_else(|_| "oci-runc-name".into());
    let ours = Variant::ALL
        .into_iter()
        .find(|v| v.is_ours() && v.name() == ours)
        .unwrap_or_else(|| panic!("BENCH_OURS: unknown variant {ours:?}"));
    println!("# ours: {}", ours.name());
    let sides = Sides {
        ours: Ctx::new("bench", ours),
        go: Ctx::new("bench", Variant::RuncV2Reference),
    };
    let header = format!(
        "containerd {}, {}, kernel {}, {} CPUs, load {load_before}; BENCH_N={n} BENCH_ROUNDS={rounds}",
        bench::server_version(d),
        bench::first_line_of("runc", &["--version"]),
        bench::first_line_of("uname", &["-r"]),
        std::thread::available_parallelism().map_or(0, |p| p.get()),
    );
    println!("# {header}");

    let mut run_rm = Metric::new("ctr run --rm IMAGE id true", "ms", true);
    let mut exec = Metric::new("ctr task exec true", "ms", true);
    let mut rss1 = Metric::new("shim RSS, 1 idle container", "MiB", true);
    let mut pss1 = Metric::new("shim PSS, 1 idle container", "MiB", true);
    let mut anon1 = Metric::new("shim anonymous memory, 1 idle container", "MiB", true);
    let mut thr1 = Metric::new("shim threads, 1 idle container", "n", true);
    let mut rss10 = Metric::new("shim RSS per container, 10 idle", "MiB", true);
    let mut pss10 = Metric::new("shim PSS per container, 10 idle", "MiB", true);
    let mut tput = Metric::new("stdout 128 MiB via ctr run --rm", "MiB/s", false);
    let mut conc = Metric::new("20 concurrent ctr run -d, all RUNNING", "s", true);

    let phase = |what: &str| println!("# {what} ({:.0?} so far)", started.elapsed());
    phase("ctr run --rm latency");
    run_rm_latency(&sides, n, &mut run_rm);
    phase("exec latency");
    exec_latency(&sides, n, &mut exec);
    phase("memory, 1 idle container");
    memory_one(
        &sides,
        rounds,
        [&mut rss1, &mut pss1, &mut anon1, &mut thr1],
    );
    phase("memory, 10 idle containers");
    memory_ten(&sides, rounds, &mut rss10, &mut pss10);
    phase("stdout throughput");
    throughput(&sides, rounds, &mut tput);
    phase("20 concurrent starts");
    concurrent_starts(&sides, rounds, &mut conc);

    let metrics = [
        &run_rm, &exec, &rss1, &pss1, &anon1, &thr1, &rss10, &pss10, &tput, &conc,
    ];
    let (ours_h, ours_long) = describe_ours(ours);
    print_table(&ours_h, &metrics);
    let load_after = bench::loadavg();
    let total = started.elapsed();
    println!("# load before {load_before}, after {load_after}; total {total:.0?}");
    drop(sides);
    d.teardown();
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let doc = json!({
            "environment": header,
            "load_before": load_before,
            "load_after": load_after,
            "total_seconds": total.as_secs_f64(),
            "n": n,
            "rounds": rounds,
            "ours": ours_long,
            "go": "containerd-shim-runc-v2 (io.containerd.runc.v2) + runc",
            "metrics": metrics.iter().map(|m| m.json()).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).expect("JSON encoding");
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("bench: writing {path}: {e}");
            std::process::exit(1);
        }
        println!("# JSON written to {path}");
    }
}
