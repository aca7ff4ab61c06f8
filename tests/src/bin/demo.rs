//! The README's demo: a private containerd, the offline busybox image, and
//! containers run through our `shim-oci` with runc and with crun, every
//! command printed with its output. Exits non-zero on any failure; tears
//! everything down in all cases.
//!
//! `cargo run --release -p shim-e2e --bin demo` (as root; `scripts/demo.sh`
//! also installs the dependencies and builds the shim).

use std::time::Duration;

use shim_e2e::runtime::OUR_RUNTIME_NAME;
use shim_e2e::util::{shell_join, wait_for};
use shim_e2e::{bench, procfs, CmdOutput, PrivateContainerd, IMAGE};

const NS: &str = "demo";

type Result<T> = std::result::Result<T, String>;

struct Demo {
    d: &'static PrivateContainerd,
}

impl Demo {
    /// Run `ctr -a ADDR -n demo ARGS`, printing the command and its output.
    fn ctr(&self, args: &[&str]) -> Result<CmdOutput> {
        let out = self.ctr_quiet(args);
        println!("$ ctr -n {NS} {}", shell_join(args));
        print!("{}{}", out.stdout_str(), out.stderr_str());
        if !out.ok() {
            return Err(format!("command failed\n{}", out.describe()));
        }
        Ok(out)
    }

    fn ctr_quiet(&self, args: &[&str]) -> CmdOutput {
        self.d.ctr_raw(Some(NS), args, Duration::from_secs(60))
    }

    /// `ctr run` through our shim, selected by name, with the runtime config `config`.
    fn run(&self, config: Option<&str>, opts: &[&str], id: &str, cmd: &[&str]) -> Result<()> {
        let fifo_dir = self.d.fifo_dir.display().to_string();
        let mut args = vec![
            "run",
            "--runtime",
            OUR_RUNTIME_NAME,
            "--fifo-dir",
            &fifo_dir,
        ];
        if let Some(c) = config {
            args.extend(["--runtime-config-path", c]);
        }
        args.extend_from_slice(opts);
        args.extend([IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args).map(drop)
    }

    /// Wait until `ctr task ls` shows `id` with `status`.
    fn wait_status(&self, id: &str, status: &str) -> Result<()> {
        wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            let out = self.ctr_quiet(&["task", "ls"]);
            let stdout = out.stdout_str();
            stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .any(|f| f.first() == Some(&id) && f.get(2) == Some(&status))
                .then_some(())
        })
        .ok_or_else(|| format!("task {id} did not become {status} within 20 s"))
    }

    /// The OCI runtime calls the harness's `runc`/`crun` wrappers logged for `id`.
    fn show_runtime_calls(&self, id: &str) {
        let log = std::fs::read_to_string(self.d.oci_calls_log()).unwrap_or_default();
        let calls: Vec<String> = log
            .lines()
            .filter(|l| l.split_whitespace().last() == Some(id) || l.contains(&format!(" {id} ")))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                // "<runtime> --root R --log L --log-format json [flags] <op> ..."
                let op = words
                    .iter()
                    .skip_while(|w| **w != "--log-format")
                    .skip(2)
                    .find(|w| !w.starts_with('-'))
                    .copied()
                    .unwrap_or("?");
                format!("{} {op}", words[0])
            })
            .collect();
        println!(
            "# OCI runtime calls the shim made for {id}: {}\n",
            calls.join(", ")
        );
    }
}

fn demo(d: &'static PrivateContainerd) -> Result<()> {
    let demo = Demo { d };
    d.register_namespace(NS);
    println!(
        "# private containerd {} in {}",
        bench::server_version(d),
        d.dir.display()
    );
    println!("# `ctr` below is: {}", shell_join(&d.ctr_base(None)));
    println!(
        "# our shim: {} (linked as containerd-shim-v2-oci on containerd's PATH)\n",
        d.our_shim.as_ref().map_err(|e| e.clone())?.display()
    );

    demo.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "overlayfs",
        &d.image.archive.display().to_string(),
    ])?;
    println!();

    // A container that exits at once may lose its last output to ctr 1.6
    // (it stops reading when it sees the exit): hence the short sleeps.
    demo.run(
        None,
        &["--rm"],
        "demo-runc",
        &[
            "sh",
            "-c",
            "echo hello from runc via our shim; uname -a; id; sleep 0.3",
        ],
    )?;
    demo.show_runtime_calls("demo-runc");

    let crun = d.dir.join("runtime-crun.toml");
    let crun_s = crun.display().to_string();
    println!(
        "# {crun_s}: {}",
        std::fs::read_to_string(&crun)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or("")
    );
    demo.run(
        Some(&crun_s),
        &["--rm"],
        "demo-crun",
        &[
            "sh",
            "-c",
            "echo hello from crun via our shim; uname -a; id; sleep 0.3",
        ],
    )?;
    demo.show_runtime_calls("demo-crun");

    demo.run(None, &["-d"], "demo-bg", &["sleep", "100000"])?;
    demo.wait_status("demo-bg", "RUNNING")?;
    demo.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &d.fifo_dir.display().to_string(),
        "--exec-id",
        "e1",
        "demo-bg",
        "sh",
        "-c",
        "echo exec in the running container:; ps; sleep 0.3",
    ])?;
    demo.ctr(&["task", "ls"])?;
    if let [shim] = procfs::shim_pids(NS, "demo-bg")[..] {
        let m = bench::memory_of(&[shim]);
        println!(
            "# its shim: pid {shim}, {} threads, RSS {} KiB, PSS {} KiB: {}",
            m.threads,
            m.rss_kib,
            m.pss_kib,
            procfs::cmdline(shim).join(" ")
        );
    }
    demo.ctr(&["task", "kill", "-s", "SIGKILL", "demo-bg"])?;
    demo.wait_status("demo-bg", "STOPPED")?;
    demo.ctr(&["task", "ls"])?;
    demo.ctr(&["task", "delete", "demo-bg"])?;
    demo.ctr(&["container", "rm", "demo-bg"])?;
    demo.show_runtime_calls("demo-bg");
    Ok(())
}

fn main() {
    bench::exit_cleanly_on_panic_and_signals();
    let d = PrivateContainerd::shared();
    let result = demo(d).map_err(|e| format!("{e}\n{}", d.log_tail(30, None)));
    d.teardown();
    match result {
        Ok(()) => println!("# done: containerd stopped, {} removed", d.dir.display()),
        Err(e) => {
            eprintln!("\ndemo FAILED: {e}");
            std::process::exit(1);
        }
    }
}
