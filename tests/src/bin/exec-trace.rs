//! Where the time of `ctr task exec` goes on the VM shim: runs a sleeper in a VM with the guest
//! console and the agent's debug log on, times `TRACE_N` (default 10) execs of `true` (and as
//! many on the process shim, for what ctr and containerd cost around any shim), then prints
//! each exec's time as the shim saw it (Start to the agent's reply) and as the agent did.
//! `TRACE_CONSOLE=0` leaves the console and the agent's debug log off: the serial console is
//! slow under TCG and inflates the times it shows.
//!
//! `cargo run --release -p shim-e2e --bin exec-trace` (as root, guest image built).

use std::time::Duration;

use shim_e2e::bench::{self, median};
use shim_e2e::{Ctx, PrivateContainerd, Variant, IMAGE};

fn main() {
    bench::exit_cleanly_on_panic_and_signals();
    let n: usize = std::env::var("TRACE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let d = PrivateContainerd::shared();
    let vm = Ctx::new("exec-trace", Variant::VmPath);
    let shim = d.our_vm_shim.clone().expect("the VM shim is built");
    let toml = vm.work.join("trace.toml");
    let image = shim_e2e::runtime::guest_image_dir();
    let with_console = std::env::var("TRACE_CONSOLE").map_or(true, |v| v != "0");
    std::fs::write(
        &toml,
        format!(
            "image = {}\nconsole_log = {with_console}\nkernel_params = [{}]\n",
            serde_json::Value::String(image.display().to_string()),
            if with_console { "\"agent.debug\"" } else { "" }
        ),
    )
    .expect("writing the settings");
    let args: Vec<String> = [
        "run",
        "-d",
        "--runtime",
        &shim.display().to_string(),
        "--runtime-config-path",
        &toml.display().to_string(),
        "--fifo-dir",
        &d.fifo_dir.display().to_string(),
        IMAGE,
        "x",
        "sleep",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = vm.ctr(&args);
    vm.check(&out, "ctr run -d");
    vm.wait_status("x", "RUNNING", Duration::from_secs(30));
    let from = d.log_offset();
    let mut times = Vec::new();
    for i in 0..n + 2 {
        let out = vm.exec("x", &format!("e{i}"), &[], &["true"]);
        vm.check(&out, "exec");
        println!("vm exec e{i}: {:.1} ms", out.elapsed.as_secs_f64() * 1000.0);
        if i >= 2 {
            times.push(out.elapsed.as_secs_f64() * 1000.0);
        }
    }
    let log = d.log_since(from);
    let cpath = d.bundle(&vm.ns, "x").join("vm/console.log");
    let console = std::fs::read(&cpath).unwrap_or_default();
    let console = String::from_utf8_lossy(&console).into_owned();
    let proc_ctx = Ctx::new("exec-trace", Variant::ProcessName);
    proc_ctx.run_sleeper("y");
    let mut ptimes = Vec::new();
    for i in 0..n + 2 {
        let out = proc_ctx.exec("y", &format!("e{i}"), &[], &["true"]);
        proc_ctx.check(&out, "exec");
        if i >= 2 {
            ptimes.push(out.elapsed.as_secs_f64() * 1000.0);
        }
    }
    println!("--- shim log ---");
    for l in log.lines().filter(|l| l.contains(": guest pid ")) {
        println!("{l}");
    }
    println!("--- guest console ---");
    for l in console.lines().filter(|l| l.contains("DEBUG: exec ")) {
        println!("{l}");
    }
    println!(
        "median exec: vm {:.1} ms, process shim {:.1} ms",
        median(&times),
        median(&ptimes)
    );
    vm.kill_and_remove("x");
    proc_ctx.kill_and_remove("y");
    drop(vm);
    drop(proc_ctx);
    d.teardown();
}
