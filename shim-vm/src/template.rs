//! VM templates: a VM booted once by the image builder and saved, so the shim restores a ready
//! guest instead of booting one (issue 5: create+start and host memory per VM).
//!
//! Making one (image builder, [`build`]): boot the default VM with its RAM in a file
//! (`memory-backend-file`, `share=on`), wait until the agent answers, hang up, and migrate with
//! QEMU's `x-ignore-shared` capability to a file. RAM that is a shared file is not part of the
//! stream, so the stream is only the device state (about 60 KiB) and the RAM stays in
//! `memory`. The agent has done nothing per-VM by then: the 9p share is mounted at the first
//! container, and the host sends the clock and entropy at every start (`SyncGuest`).
//!
//! Using one (the shim, [`restore`]): the same command line, but RAM is the same file with
//! `share=off` (a private copy-on-write mapping: pages a VM only reads stay the file's page
//! cache, shared by every VM of the template; only pages it writes are its own), `-incoming
//! defer`, then over QMP `x-ignore-shared` and `migrate-incoming` from the state file, handed
//! to QEMU as an inherited descriptor. On the destination `ramblock_is_ignored` is false for a
//! private block, but the source sent no page of it (it was shared there), so the guest's RAM
//! is the file's content: QEMU 7.2's `ram_load` only checks the block's address and size.
//!
//! "Decide fast, never boot and hope": whether a template fits is decided before QEMU starts,
//! from its manifest ([`Template::mismatch`]): the exact command line shape (memory, vcpus,
//! machine, devices, kernel parameters, accelerator), the files (kernel, initramfs, QEMU) by
//! path, size and mtime, and the TSC frequency. Anything else means a cold boot, logged. A
//! restore that fails anyway (QEMU refuses the stream) fails within milliseconds and the shim
//! then boots cold.
//!
//! Files: `<image dir>/template` is a symlink to `template-<inputs>/` (`memory`, `state`,
//! `template.toml`), swapped atomically by the builder; the files are never written again once
//! published, since a private mapping still sees later writes to pages it has not copied.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use shim_common::reaper::Reaper;

use crate::qemu::{self, Accel, Booted, MemoryFile, Vm, VmConfig};
use crate::qmp::{migration_status, Qmp};
use crate::settings::VmSettings;
use crate::{Error, Result};

/// The symlink in the image directory naming the current template.
pub const LINK: &str = "template";
pub const MEMORY: &str = "memory";
pub const STATE: &str = "state";
pub const MANIFEST: &str = "template.toml";
/// Where the builder makes a template before publishing it.
const STAGING: &str = "template.tmp";
/// Bumped when what a template holds or how it is restored changes.
const FORMAT: u32 = 1;
/// How far the host TSC may be from the template's, in parts per million: under TCG the guest
/// TSC runs at the host's rate, and the guest calibrated its clock once, in the template.
const TSC_TOLERANCE_PPM: u64 = 2000;
/// How long the template's agent is left alone after the hang-up before it is saved, so it is
/// back to waiting for a host (and the guest idle) in the snapshot.
const SETTLE: Duration = Duration::from_millis(300);

/// What a template was made with; `template.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// A hash of everything below: the builder remakes the template when it changes.
    pub inputs: String,
    pub accel: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub tsc_khz: Option<u64>,
    /// The kernel, initramfs and QEMU binary: canonical path, size, mtime.
    pub kernel: String,
    pub initrd: String,
    pub qemu: String,
    /// The full kernel command line the template booted with (for people; `shape` has it too).
    pub cmdline: String,
    /// QEMU's arguments with the per-VM values (share path, memory file, files) as placeholders.
    pub shape: Vec<String>,
}

/// A file's identity for the manifest: canonical path, size and mtime.
fn stamp(path: &Path) -> String {
    let p = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match fs::metadata(&p) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}.{}",
                p.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            )
        }
        Err(_) => format!("{}:missing", p.display()),
    }
}

/// The QEMU binary as the shim would run it: a bare name is looked up in PATH.
fn qemu_path(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| program.to_path_buf())
}

/// QEMU's arguments for `config` with what may differ between a template and its VMs
/// replaced: the share's host path, the memory file, `-incoming`, the kernel and initramfs
/// paths (compared by [`stamp`]) and the TSC value (compared with a tolerance).
pub fn shape(config: &VmConfig) -> Vec<String> {
    let mut c = config.clone();
    c.share = c.share.as_ref().map(|_| PathBuf::from("<share>"));
    c.memory_file = Some(MemoryFile {
        path: PathBuf::from("<memory>"),
        shared: false,
    });
    c.incoming = None;
    c.tsc_khz = None;
    c.kernel = PathBuf::from("<kernel>");
    c.initrd = PathBuf::from("<initrd>");
    c.args()
}

impl Manifest {
    /// The manifest of a template made from `config` (its accelerator chosen).
    pub fn new(config: &VmConfig) -> Manifest {
        let mut m = Manifest {
            format: FORMAT,
            inputs: String::new(),
            accel: config.accel.as_str().to_string(),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            tsc_khz: if config.accel == Accel::Tcg {
                config.tsc_khz
            } else {
                None
            },
            kernel: stamp(&config.kernel),
            initrd: stamp(&config.initrd),
            qemu: stamp(&qemu_path(&config.qemu)),
            cmdline: config.kernel_cmdline(),
            shape: shape(config),
        };
        let text = toml::to_string(&m).unwrap_or_default();
        m.inputs = Sha256::digest(text.as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        m
    }
}

/// A published template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The resolved `template-<inputs>` directory (resolved once, so the memory and state
    /// files always come from the same template even if the builder swaps the link).
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Template {
    /// The template in `image_dir`, if there is one; an unreadable one is an error (the caller
    /// logs it and boots cold).
    pub fn load(image_dir: &Path) -> Result<Option<Template>> {
        let link = image_dir.join(LINK);
        if fs::symlink_metadata(&link).is_err() {
            return Ok(None);
        }
        let dir = fs::canonicalize(&link)
            .map_err(|e| Error::io(format!("resolving {}", link.display()), e))?;
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
        Ok(Some(Template { dir, manifest }))
    }

    /// Why a VM with `config` (its accelerator chosen) cannot be restored from this template,
    /// or `None` when it can.
    pub fn mismatch(&self, config: &VmConfig) -> Option<String> {
        let m = &self.manifest;
        let want = Manifest::new(config);
        if m.format != FORMAT {
            return Some(format!(
                "template format {} (this shim reads {FORMAT})",
                m.format
            ));
        }
        if m.accel != want.accel {
            return Some(format!(
                "it was made under {}, this VM uses {}",
                m.accel, want.accel
            ));
        }
        if (m.memory_mib, m.vcpus) != (want.memory_mib, want.vcpus) {
            return Some(format!(
                "it has {} MiB and {} vCPU(s), this VM {} MiB and {}",
                m.memory_mib, m.vcpus, want.memory_mib, want.vcpus
            ));
        }
        for (what, theirs, ours) in [
            ("kernel", &m.kernel, &want.kernel),
            ("initramfs", &m.initrd, &want.initrd),
            ("QEMU binary", &m.qemu, &want.qemu),
        ] {
            if theirs != ours {
                return Some(format!(
                    "the {what} differs (template {theirs}, this VM {ours})"
                ));
            }
        }
        if let (Some(t), Some(h)) = (m.tsc_khz, want.tsc_khz) {
            if t.abs_diff(h) * 1_000_000 > t * TSC_TOLERANCE_PPM {
                return Some(format!("the host TSC is {h} kHz, the template's {t} kHz"));
            }
        }
        if m.shape != want.shape {
            let (theirs, ours) = m
                .shape
                .iter()
                .zip(&want.shape)
                .find(|(a, b)| a != b)
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .unwrap_or(("(length)", "(length)"));
            return Some(format!(
                "the QEMU command line differs: template {theirs:?}, this VM {ours:?}"
            ));
        }
        None
    }

    /// Why this template cannot be used on this host even though the settings match, or
    /// `None`. QEMU 7.2 opens a guest RAM file read-write even for a private (`share=off`)
    /// mapping, through which it writes nothing (8.2 added `readonly=on,rom=off` for exactly
    /// this); on a read-only image cache the restore would fail, so that is decided here,
    /// without trying.
    pub fn unusable_here(&self) -> Option<String> {
        use nix::unistd::{access, AccessFlags};
        let memory = self.dir.join(MEMORY);
        let state = self.dir.join(STATE);
        let want = u64::from(self.manifest.memory_mib) << 20;
        match fs::metadata(&memory) {
            Ok(m) if m.len() == want => {}
            Ok(m) => {
                return Some(format!(
                    "{} has {} bytes, not {want}",
                    memory.display(),
                    m.len()
                ))
            }
            Err(e) => return Some(format!("{}: {e}", memory.display())),
        }
        if let Err(e) = access(&state, AccessFlags::R_OK) {
            return Some(format!("{}: {e}", state.display()));
        }
        if access(&memory, AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
            return Some(format!(
                "{} cannot be opened read-write here, which QEMU 7.2 needs even for a private \
                 mapping (it writes nothing through it)",
                memory.display()
            ));
        }
        None
    }

    /// `config` restored from this template: RAM a private mapping of its memory, the device
    /// state as the incoming migration, and the template's TSC value (the guest calibrated
    /// with it once; the command line then stays the template's exactly).
    pub fn restore_config(&self, config: &VmConfig) -> VmConfig {
        let mut c = config.clone();
        c.memory_file = Some(MemoryFile {
            path: self.dir.join(MEMORY),
            shared: false,
        });
        c.incoming = Some(self.dir.join(STATE));
        if c.accel == Accel::Tcg {
            c.tsc_khz = self.manifest.tsc_khz;
        }
        c
    }
}

/// Migration capabilities for both ends: RAM that is a shared file stays out of the stream;
/// MIGRATION events tell when it is done.
fn capabilities() -> serde_json::Value {
    json!({ "capabilities": [
        { "capability": "x-ignore-shared", "state": true },
        { "capability": "events", "state": true },
    ]})
}

async fn wait_migration(qmp: &mut Qmp) -> Result<()> {
    let ev = qmp
        .wait_event(|e| {
            matches!(
                migration_status(e),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await?;
    match migration_status(&ev) {
        Some("completed") => Ok(()),
        other => Err(Error::Command(format!(
            "the migration ended {}",
            other.unwrap_or("oddly")
        ))),
    }
}

/// Starts the VM of `config` (from [`Template::restore_config`]) and brings it up from the
/// template: QMP `migrate-incoming` from the inherited state file, `cont` if the stream left
/// it paused, then the agent's handshake. QEMU is killed (and gone) when this fails.
pub async fn restore(
    config: &VmConfig,
    reaper: &Arc<Reaper>,
    deadline: Duration,
) -> Result<Booted> {
    let vm = Vm::spawn(config, reaper)?;
    let end = vm.started + deadline;
    let steps = async {
        let fd = vm
            .incoming_fd
            .ok_or_else(|| Error::Format("a restore needs the template's state file".into()))?;
        let mut qmp = Qmp::connect(&config.run_dir.join(qemu::QMP_SOCKET), end).await?;
        let monitor = vm.started.elapsed();
        qmp.execute("migrate-set-capabilities", capabilities())
            .await?;
        qmp.execute("migrate-incoming", json!({ "uri": format!("fd:{fd}") }))
            .await?;
        wait_migration(&mut qmp).await?;
        let status = qmp.execute("query-status", json!({})).await?;
        if status.get("running").and_then(|r| r.as_bool()) != Some(true) {
            qmp.execute("cont", json!({})).await?;
        }
        let running = vm.started.elapsed();
        let agent = crate::agent::Agent::connect(&vm.agent_socket(), end).await?;
        log::debug!(
            "restore: QMP up at {} ms, guest running at {} ms, agent answered at {} ms",
            monitor.as_millis(),
            running.as_millis(),
            vm.started.elapsed().as_millis()
        );
        Ok(agent)
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout_at(end.into(), steps) => match r {
            Ok(r) => r,
            Err(_) => Err(Error::Agent("the restored VM did not answer in time".into())),
        },
        status = vm.wait() => Err(Error::Command(format!(
            "qemu exited with status {status} during the restore"
        ))),
    };
    match outcome {
        Ok(agent) => Ok(Booted {
            vm,
            agent,
            accel: config.accel,
        }),
        Err(e) => {
            let log = vm.log();
            vm.kill();
            // Its sockets are unlinked when it exits: gone before a cold boot reuses the paths.
            let _ = vm.wait_timeout(Duration::from_secs(5)).await;
            Err(Error::Command(format!("{e}; qemu: {}", log.trim())))
        }
    }
}

/// What the image builder needs to make a template.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub cache_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub qemu: PathBuf,
}

/// Makes (or keeps, when its inputs did not change) the template for the default settings in
/// `cache_dir`, and returns its directory.
pub fn build(opts: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let settings = VmSettings {
        qemu: opts.qemu.clone(),
        ..VmSettings::default()
    };
    let choice = qemu::choose_accel();
    let accels: &[Accel] = match choice.accel {
        Accel::Kvm => &[Accel::Kvm, Accel::Tcg],
        Accel::Tcg => &[Accel::Tcg],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting a runtime", e))?;
    let mut last = None;
    for &accel in accels {
        match build_with(opts, &settings, accel, &rt, log) {
            Ok(dir) => return Ok(dir),
            Err(e) => {
                log(&format!("template under {}: {e}", accel.as_str()));
                // The error carries QEMU's log; the half-made template (a RAM-sized file) goes.
                let _ = fs::remove_dir_all(opts.cache_dir.join(STAGING));
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Unavailable("no accelerator".into())))
}

fn build_with(
    opts: &BuildOptions,
    settings: &VmSettings,
    accel: Accel,
    rt: &tokio::runtime::Runtime,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let staging = opts.cache_dir.join(STAGING);
    let mut config = settings.vm_config(
        opts.kernel.clone(),
        opts.initrd.clone(),
        staging.clone(),
        staging.join("share"),
    );
    config.accel = accel;
    if accel == Accel::Tcg {
        config.tsc_khz = qemu::host_tsc_khz();
    }
    let manifest = Manifest::new(&config);
    if let Ok(Some(t)) = Template::load(&opts.cache_dir) {
        if t.manifest.inputs == manifest.inputs && t.dir.join(STATE).is_file() {
            return Ok(t.dir);
        }
    }
    log(&format!("making the VM template ({})", accel.as_str()));
    let _ = fs::remove_dir_all(&staging);
    let share = staging.join("share");
    fs::create_dir_all(&share)
        .map_err(|e| Error::io(format!("creating {}", share.display()), e))?;
    let memory = staging.join(MEMORY);
    let f = fs::File::create(&memory)
        .map_err(|e| Error::io(format!("creating {}", memory.display()), e))?;
    f.set_len(u64::from(config.memory_mib) << 20)
        .map_err(|e| Error::io(format!("sizing {}", memory.display()), e))?;
    drop(f);
    config.memory_file = Some(MemoryFile {
        path: memory,
        shared: true,
    });
    let deadline = match accel {
        Accel::Kvm => qemu::KVM_DEADLINE,
        Accel::Tcg => settings.boot_timeout(),
    };
    let mut child = config
        .command()?
        .spawn()
        .map_err(|e| Error::Unavailable(format!("starting {}: {e}", config.qemu.display())))?;
    let saved = rt.block_on(save(&config, &mut child, deadline));
    if saved.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    if let Err(e) = saved {
        let qemu_log = fs::read_to_string(staging.join("qemu.log")).unwrap_or_default();
        return Err(Error::Command(format!("{e}; qemu: {}", qemu_log.trim())));
    }
    let state_tmp = staging.join("state.tmp");
    fs::rename(&state_tmp, staging.join(STATE))
        .map_err(|e| Error::io(format!("renaming {}", state_tmp.display()), e))?;
    for f in qemu::RUN_FILES {
        let _ = fs::remove_file(staging.join(f));
    }
    let _ = fs::remove_dir(&share);
    let text = format!(
        "# written by shim-vm-image: the VM template's settings (see the shim's `template` setting)\n{}",
        toml::to_string(&manifest).map_err(|e| Error::Format(format!("manifest: {e}")))?
    );
    fs::write(staging.join(MANIFEST), text)
        .map_err(|e| Error::io(format!("writing the manifest in {}", staging.display()), e))?;
    let name = format!("{LINK}-{}", manifest.inputs);
    let dir = opts.cache_dir.join(&name);
    // A VM may still map an older template's memory: unlinking keeps its pages alive.
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir)
        .map_err(|e| Error::io(format!("renaming {}", staging.display()), e))?;
    let link = opts.cache_dir.join(LINK);
    let tmp_link = opts.cache_dir.join(format!("{LINK}.tmp-link"));
    let _ = fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&name, &tmp_link)
        .map_err(|e| Error::io(format!("linking {}", tmp_link.display()), e))?;
    fs::rename(&tmp_link, &link)
        .map_err(|e| Error::io(format!("renaming {}", link.display()), e))?;
    if let Ok(entries) = fs::read_dir(&opts.cache_dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{LINK}-")) && n != name {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
}

/// Boots the template VM, waits for its agent, hangs up, and saves the device state to
/// `state.tmp` in its run directory.
async fn save(
    config: &VmConfig,
    child: &mut std::process::Child,
    deadline: Duration,
) -> Result<()> {
    let end = Instant::now() + deadline;
    let socket = config.run_dir.join(qemu::AGENT_SOCKET);
    let ready = async {
        loop {
            if let Ok(stream) = crate::agent::connect_socket(&socket).await {
                let nonce = vm_channel::fresh_nonce();
                let left = end.saturating_duration_since(Instant::now());
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(left, vm_channel::host_handshake(stream, nonce)).await
                {
                    // The agent answered: it is serving. Hang up so that the snapshot holds an
                    // agent waiting for a host, as every restored VM then finds it.
                    drop(stream);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let exited = async {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout_at(end.into(), ready) => {}
        status = exited => {
            return Err(Error::Command(format!("qemu exited ({status}) before the agent answered")));
        }
    }
    if Instant::now() >= end {
        return Err(Error::Agent(
            "the template VM's agent did not answer in time".into(),
        ));
    }
    tokio::time::sleep(SETTLE).await;
    let mut qmp = Qmp::connect(&config.run_dir.join(qemu::QMP_SOCKET), end).await?;
    qmp.execute("migrate-set-capabilities", capabilities())
        .await?;
    // QEMU runs in the run directory: the relative path needs no quoting.
    qmp.execute("migrate", json!({ "uri": "exec:cat > state.tmp" }))
        .await?;
    tokio::time::timeout(Duration::from_secs(60), wait_migration(&mut qmp))
        .await
        .map_err(|_| Error::Command("the template's migration did not finish".into()))??;
    let _ = qmp.execute("quit", json!({})).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> VmConfig {
        let k = dir.join("vmlinux");
        let i = dir.join("initramfs.cpio");
        fs::write(&k, b"k").unwrap();
        fs::write(&i, b"i").unwrap();
        let mut c = VmSettings::default().vm_config(k, i, dir.join("run"), dir.join("share"));
        c.qemu = dir.join("qemu");
        fs::write(&c.qemu, b"q").unwrap();
        c.tsc_khz = Some(2_596_134);
        c
    }

    fn template(c: &VmConfig) -> Template {
        Template {
            dir: PathBuf::from("/t"),
            manifest: Manifest::new(c),
        }
    }

    #[test]
    fn same_settings_match_and_per_vm_paths_do_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let t = template(&c);
        let mut other = c.clone();
        other.share = Some("/elsewhere/share".into());
        other.run_dir = "/elsewhere".into();
        other.tsc_khz = Some(2_596_200);
        assert_eq!(t.mismatch(&other), None);
        let r = t.restore_config(&other);
        let args = r.args().join(" ");
        assert!(args.contains("mem-path=/t/memory,share=off"), "{args}");
        assert!(args.contains("memory-backend=mem"), "{args}");
        assert!(args.contains("-incoming defer"), "{args}");
        assert!(args.contains("tsc_early_khz=2596134"), "{args}");
        assert!(args.contains("path=/elsewhere/share,"), "{args}");
    }

    #[test]
    fn any_other_setting_is_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let t = template(&c);
        type Change = Box<dyn Fn(&mut VmConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("MiB", Box::new(|c| c.memory_mib = 512)),
            ("vCPU", Box::new(|c| c.vcpus = 2)),
            ("kvm", Box::new(|c| c.accel = Accel::Kvm)),
            (
                "command line",
                Box::new(|c| c.extra_cmdline.push("agent.debug".into())),
            ),
            (
                "command line",
                Box::new(|c| c.console_log = Some("/c.log".into())),
            ),
            ("TSC", Box::new(|c| c.tsc_khz = Some(2_700_000))),
        ];
        for (word, change) in cases {
            let mut other = c.clone();
            change(&mut other);
            let why = t.mismatch(&other).unwrap_or_default();
            assert!(why.contains(word), "{word}: {why:?}");
        }
        fs::write(&c.initrd, b"a newer initramfs").unwrap();
        let why = t.mismatch(&c).unwrap_or_default();
        assert!(why.contains("initramfs"), "{why}");
    }

    #[test]
    fn manifest_round_trips_and_loads_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let m = Manifest::new(&c);
        assert_eq!(m.inputs.len(), 24);
        let tdir = dir.path().join(format!("{LINK}-{}", m.inputs));
        fs::create_dir(&tdir).unwrap();
        fs::write(tdir.join(MANIFEST), toml::to_string(&m).unwrap()).unwrap();
        assert!(Template::load(dir.path()).unwrap().is_none());
        std::os::unix::fs::symlink(tdir.file_name().unwrap(), dir.path().join(LINK)).unwrap();
        let t = Template::load(dir.path()).unwrap().unwrap();
        assert_eq!(t.manifest, m);
        assert_eq!(t.dir, fs::canonicalize(&tdir).unwrap());
        // Usable only with a state file and a memory file of the guest's size.
        assert!(t.unusable_here().is_some());
        fs::write(tdir.join(STATE), b"s").unwrap();
        let mem = fs::File::create(tdir.join(MEMORY)).unwrap();
        mem.set_len(1 << 20).unwrap();
        assert!(t.unusable_here().unwrap().contains("bytes"));
        mem.set_len(u64::from(m.memory_mib) << 20).unwrap();
        assert_eq!(t.unusable_here(), None);
    }
}
