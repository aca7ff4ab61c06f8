//! The guest image: an uncompressed `vmlinux` and an initramfs whose `/init` is our agent, built
//! from Debian's kernel package and this workspace.
//!
//! Steps, each skipped when its inputs did not change:
//! 1. resolve the kernel metapackage (`linux-image-amd64`) to the versioned package apt would
//!    install, with its version and SHA256 (`apt-cache show`);
//! 2. `apt-get download` it, check the SHA256, unpack `boot/` and `lib/modules/` (see [`deb`]),
//!    and pull the ELF out of the bzImage (see [`bzimage`]) — kept per package version under
//!    `kernels/`;
//! 3. build the static agent (`cargo build --release --target x86_64-unknown-linux-gnu` with
//!    `+crt-static`);
//! 4. resolve the module list in dependency order (see [`kmod`]) and write the cpio (see
//!    [`cpio`]) — rebuilt only when the hash of its inputs (package checksum, module list, agent
//!    binary) differs from the one stored beside it;
//! 5. make the VM template (see [`template`]): the default VM booted once and saved, remade only
//!    when its inputs (the files above, QEMU, the command line) change. Without QEMU, or if it
//!    fails, the image is still complete and the shim boots cold.
//!
//! [`deb`]: crate::deb
//! [`bzimage`]: crate::bzimage
//! [`kmod`]: crate::kmod
//! [`cpio`]: crate::cpio
//! [`template`]: crate::template

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::kmod::{ModuleTree, MICROVM_MODULES};
use crate::{Error, Result};

/// Bumped when the image layout changes, so old caches are rebuilt.
const LAYOUT_VERSION: &str = "shim-vm-image 1";
/// The target the agent is built for; with `+crt-static` glibc gives a static-pie.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
pub const AGENT_PACKAGE: &str = "vm-agent";
/// How the agent is compiled: static (it is PID 1 with no libraries around) and stripped.
pub const AGENT_RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=symbols";
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-amd64";

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The workspace root (its `Cargo.toml`), to build the agent from.
    pub workspace: PathBuf,
    /// Where everything lands; `<workspace>/target/guest` by default.
    pub cache_dir: PathBuf,
    /// A kernel package or metapackage apt knows.
    pub kernel_package: String,
    pub modules: Vec<String>,
    /// A prebuilt static agent instead of building one.
    pub agent: Option<PathBuf>,
    /// Make the VM template too.
    pub template: bool,
    /// The QEMU the template is made with (the shim's default: by name from PATH).
    pub qemu: PathBuf,
}

impl BuildOptions {
    pub fn new(workspace: PathBuf) -> Self {
        BuildOptions {
            cache_dir: default_cache_dir(&workspace),
            workspace,
            kernel_package: DEFAULT_KERNEL_PACKAGE.to_string(),
            modules: MICROVM_MODULES.iter().map(|m| m.to_string()).collect(),
            agent: None,
            template: true,
            qemu: PathBuf::from("qemu-system-x86_64"),
        }
    }
}

/// `$CARGO_TARGET_DIR/guest` when set (the same place cargo puts everything), else
/// `<workspace>/target/guest`.
pub fn default_cache_dir(workspace: &Path) -> PathBuf {
    target_dir(workspace).join("guest")
}

fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace.join(d)
            }
        }
        _ => workspace.join("target"),
    }
}

/// The built image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_release: String,
    /// The resolved module load order (names).
    pub modules: Vec<String>,
    /// Whether the initramfs was written this time (false: the cached one was current).
    pub initrd_rebuilt: bool,
    /// The VM template's directory, when one was made (or kept).
    pub template: Option<PathBuf>,
}

/// A kernel package as apt would fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Command(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The fields of the first stanza of `apt-cache show --no-all-versions`.
fn apt_fields(package: &str) -> Result<Vec<(String, String)>> {
    let text = run(
        Command::new("apt-cache").args(["show", "--no-all-versions", package]),
        &format!("apt-cache show {package}"),
    )?;
    let stanza = text.split("\n\n").next().unwrap_or_default();
    Ok(parse_stanza(stanza))
}

fn parse_stanza(stanza: &str) -> Vec<(String, String)> {
    stanza
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The `linux-image-…` package a metapackage depends on, if it is one.
fn versioned_dependency(depends: &str) -> Option<String> {
    depends
        .split(',')
        .map(|d| d.trim())
        .filter_map(|d| d.split_whitespace().next())
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_string)
}

/// Resolves `package` (a metapackage such as `linux-image-amd64`, or a versioned package) to the
/// versioned kernel package apt would install. Runs `apt-get update` once when apt knows
/// nothing yet (a fresh machine).
pub fn resolve_kernel(package: &str) -> Result<KernelPackage> {
    let fields = match apt_fields(package) {
        Ok(f) if field(&f, "Version").is_some() => f,
        _ => {
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update",
            )
            .map_err(|e| Error::Unavailable(e.to_string()))?;
            apt_fields(package).map_err(|e| Error::Unavailable(e.to_string()))?
        }
    };
    let meta_target = field(&fields, "Depends").and_then(versioned_dependency);
    let fields = match meta_target {
        // A metapackage: a tiny package whose dependency carries the kernel.
        Some(target) if is_metapackage(field(&fields, "Installed-Size")) => apt_fields(&target)?,
        _ => fields,
    };
    let get = |k: &str| {
        field(&fields, k)
            .map(str::to_string)
            .ok_or_else(|| Error::Format(format!("apt-cache show {package}: no {k} field")))
    };
    Ok(KernelPackage {
        name: get("Package")?,
        version: get("Version")?,
        sha256: get("SHA256")?.to_ascii_lowercase(),
    })
}

/// A metapackage installs next to nothing (a few KiB of docs); a kernel package installs
/// hundreds of megabytes. Tells the two apart when a kernel package depends on another one.
fn is_metapackage(installed_size_kib: Option<&str>) -> bool {
    match installed_size_kib.and_then(|v| v.parse::<u64>().ok()) {
        None => true,
        Some(kib) => kib < 10_000,
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Holds an exclusive `flock` on the cache for the life of a build, so two builds (two test
/// binaries, a script and a test) never write the same files at once.
struct CacheLock {
    _file: File,
}

impl CacheLock {
    fn take(dir: &Path) -> Result<CacheLock> {
        let path = dir.join(".lock");
        let f = File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                "locking the guest cache",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(CacheLock { _file: f })
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader (or a build
/// interrupted halfway) never sees a partial file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

/// The unpacked kernel package: `kernels/<package>_<version>/` holding `boot/`,
/// `lib/modules/<release>/` and the extracted `vmlinux`. Downloads and unpacks only when the
/// directory is not complete yet.
fn unpacked_kernel(
    cache: &Path,
    pkg: &KernelPackage,
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, String)> {
    let dir = cache.join("kernels").join(format!(
        "{}_{}",
        pkg.name,
        pkg.version.replace([':', '/'], "_")
    ));
    let stamp = dir.join(".complete");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(pkg.sha256.as_str()) {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).map_err(|e| Error::io("creating the download dir", e))?;
        log(&format!("downloading {} {}", pkg.name, pkg.version));
        run(
            Command::new("apt-get")
                .args(["download", "-qq", &format!("{}={}", pkg.name, pkg.version)])
                .current_dir(&debs),
            &format!("apt-get download {}", pkg.name),
        )
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        let deb = find_deb(&debs, &pkg.name)?;
        let sum = sha256_file(&deb)?;
        if sum != pkg.sha256 {
            return Err(Error::Format(format!(
                "{}: SHA256 {sum} differs from apt's {}",
                deb.display(),
                pkg.sha256
            )));
        }
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        log(&format!("unpacking {}", deb.display()));
        crate::deb::extract(&deb, &dir, |p| {
            p.starts_with("boot") || p.starts_with("lib/modules")
        })?;
        let release = kernel_release(&dir)?;
        let bz = dir.join("boot").join(format!("vmlinuz-{release}"));
        log(&format!("extracting vmlinux from {}", bz.display()));
        let bz = fs::read(&bz).map_err(|e| Error::io(format!("reading {}", bz.display()), e))?;
        let elf = crate::bzimage::extract_vmlinux(&bz)?;
        write_atomic(&dir.join("vmlinux"), &elf)?;
        fs::write(&stamp, &pkg.sha256).map_err(|e| Error::io("writing the kernel stamp", e))?;
        let _ = fs::remove_file(&deb);
    }
    let release = kernel_release(&dir)?;
    Ok((dir, release))
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| Error::Command(format!("apt-get download left no {package} .deb")))
}

/// The one `lib/modules/<release>` directory of an unpacked kernel package.
fn kernel_release(dir: &Path) -> Result<String> {
    let modules = dir.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .map_err(|e| Error::io(format!("listing {}", modules.display()), e))?
        .flatten()
        .filter(|e| e.path().join("kernel").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => Err(Error::Format(format!(
            "{}: expected one kernel release, found {n}",
            modules.display()
        ))),
    }
}

/// The kernel package of the last build (from `image.toml`), if it is still unpacked.
fn cached_kernel(cache: &Path) -> Option<KernelPackage> {
    let manifest = fs::read_to_string(cache.join("image.toml")).ok()?;
    let value = |key: &str| {
        manifest.lines().find_map(|l| {
            let (k, v) = l.split_once(" = ")?;
            (k == key).then(|| v.trim_matches('"').to_string())
        })
    };
    let (name, version) = (value("kernel_package")?, value("kernel_version")?);
    let dir = cache
        .join("kernels")
        .join(format!("{name}_{}", version.replace([':', '/'], "_")));
    let sha256 = fs::read_to_string(dir.join(".complete")).ok()?;
    Some(KernelPackage {
        name,
        version,
        sha256,
    })
}

/// Builds the agent as a static executable and returns its path.
pub fn build_agent(workspace: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    log("building the static agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            AGENT_PACKAGE,
            "--target",
            AGENT_TARGET,
        ])
        .current_dir(workspace)
        // With --target, RUSTFLAGS reach only the target's crates: build scripts and proc
        // macros stay shared with ordinary host builds. Symbols are stripped too: the binary
        // lives in guest RAM (the initramfs) for the VM's whole life.
        .env("RUSTFLAGS", AGENT_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::Unavailable(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(Error::Command(format!(
            "building {AGENT_PACKAGE} failed ({status})"
        )));
    }
    let bin = target_dir(workspace)
        .join(AGENT_TARGET)
        .join("release")
        .join(AGENT_PACKAGE);
    check_static(&bin)?;
    Ok(bin)
}

/// The agent runs as PID 1 with no libraries around it: refuse a dynamically linked build
/// (one with a PT_INTERP program header).
pub fn check_static(bin: &Path) -> Result<()> {
    let elf = fs::read(bin).map_err(|e| Error::io(format!("reading {}", bin.display()), e))?;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(Error::Format(format!("{} is not an ELF", bin.display())));
    }
    let u64_at = |at: usize| {
        elf.get(at..at + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    };
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(Error::Format(format!(
            "{}: truncated ELF header",
            bin.display()
        )));
    };
    const PT_INTERP: u32 = 3;
    for i in 0..phnum as usize {
        let at = phoff as usize + i * phentsize as usize;
        if elf.get(at..at + 4) == Some(&PT_INTERP.to_le_bytes()[..]) {
            return Err(Error::Format(format!(
                "{} is dynamically linked; the guest init must be static",
                bin.display()
            )));
        }
    }
    Ok(())
}

/// Writes the initramfs: `/init` (the agent), `/dev/console`, the mount points the agent uses,
/// and the modules flat in `/lib/modules` with their load order in `/lib/modules/order`.
pub fn write_initramfs(path: &Path, agent: &[u8], modules: &[crate::kmod::Module]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let file =
        File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let io = |e| Error::io("writing the initramfs", e);
    w.file("init", 0o755, agent).map_err(io)?;
    w.dir("dev", 0o755).map_err(io)?;
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    w.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    for d in ["proc", "sys", "run", "tmp", "mnt"] {
        w.dir(d, 0o755).map_err(io)?;
    }
    let mut order = String::new();
    for m in modules {
        let file = format!("{}.ko", m.name);
        let data = crate::kmod::read_module(&m.path)?;
        w.file(&format!("lib/modules/{file}"), 0o644, &data)
            .map_err(io)?;
        order.push_str(&file);
        order.push('\n');
    }
    w.file("lib/modules/order", 0o644, order.as_bytes())
        .map_err(io)?;
    let mut out = w.finish().map_err(io)?;
    out.flush().map_err(io)?;
    drop(out);
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

/// Points `link` at `target` atomically.
fn symlink_atomic(target: &Path, link: &Path) -> Result<()> {
    let tmp = link.with_extension("tmp-link");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| Error::io(format!("linking {}", tmp.display()), e))?;
    fs::rename(&tmp, link).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

/// Builds (or reuses) the guest image. `log` hears each step that does real work.
pub fn build(opts: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<GuestImage> {
    fs::create_dir_all(&opts.cache_dir)
        .map_err(|e| Error::io(format!("creating {}", opts.cache_dir.display()), e))?;
    let _lock = CacheLock::take(&opts.cache_dir)?;
    let pkg = match resolve_kernel(&opts.kernel_package) {
        Ok(p) => p,
        // Offline: the kernel of the last build is still good for rebuilding the rest.
        Err(Error::Unavailable(why)) => match cached_kernel(&opts.cache_dir) {
            Some(p) => {
                log(&format!(
                    "apt is unavailable ({why}); using the cached {} {}",
                    p.name, p.version
                ));
                p
            }
            None => return Err(Error::Unavailable(why)),
        },
        Err(e) => return Err(e),
    };
    let (kdir, release) = unpacked_kernel(&opts.cache_dir, &pkg, log)?;

    let agent_path = match &opts.agent {
        Some(p) => {
            check_static(p)?;
            p.clone()
        }
        None => build_agent(&opts.workspace, log)?,
    };
    let agent = fs::read(&agent_path)
        .map_err(|e| Error::io(format!("reading {}", agent_path.display()), e))?;

    let tree = ModuleTree::open(&kdir.join("lib/modules").join(&release))?;
    let wanted: Vec<&str> = opts.modules.iter().map(String::as_str).collect();
    let modules = tree.resolve(&wanted)?;
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();

    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION);
    h.update(format!("\0{}\0{}\0{}\0", pkg.name, pkg.version, pkg.sha256));
    h.update(names.join(","));
    h.update(Sha256::digest(&agent));
    let inputs = hex(&h.finalize());

    let initrd = opts.cache_dir.join("initramfs.cpio");
    let inputs_file = opts.cache_dir.join("initramfs.inputs");
    let current = initrd.exists()
        && fs::read_to_string(&inputs_file).ok().as_deref() == Some(inputs.as_str());
    if !current {
        log(&format!(
            "writing {} ({} modules)",
            initrd.display(),
            modules.len()
        ));
        write_initramfs(&initrd, &agent, &modules)?;
        write_atomic(&inputs_file, inputs.as_bytes())?;
    }
    let kernel = opts.cache_dir.join("vmlinux");
    symlink_atomic(&kdir.join("vmlinux"), &kernel)?;
    let manifest = format!(
        "# written by shim-vm-image; the shim's `kernel` and `initrd` settings can point here\n\
         kernel = {:?}\ninitrd = {:?}\nkernel_package = {:?}\nkernel_version = {:?}\n\
         kernel_release = {:?}\nmodules = {:?}\ninputs_sha256 = {:?}\n",
        kernel.display().to_string(),
        initrd.display().to_string(),
        pkg.name,
        pkg.version,
        release,
        names,
        inputs,
    );
    write_atomic(&opts.cache_dir.join("image.toml"), manifest.as_bytes())?;
    let template = if opts.template {
        let t = crate::template::BuildOptions {
            cache_dir: opts.cache_dir.clone(),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            qemu: opts.qemu.clone(),
        };
        match crate::template::build(&t, log) {
            Ok(dir) => Some(dir),
            Err(e) => {
                log(&format!("no VM template (VMs will boot cold): {e}"));
                None
            }
        }
    } else {
        None
    };
    Ok(GuestImage {
        template,
        kernel,
        initrd,
        kernel_release: release,
        modules: names,
        initrd_rebuilt: !current,
    })
}

/// The command line of `shim-vm-image` (and `containerd-shim-vm-v1 image`).
pub fn cli_main(args: &[String]) -> i32 {
    let usage = "usage: shim-vm-image [--workspace DIR] [--cache-dir DIR] [--kernel-package PKG] \
                 [--modules a,b,c] [--agent PATH] [--qemu PATH] [--no-template]";
    let workspace = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut opts = BuildOptions::new(workspace);
    let mut cache_set = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| match it.next() {
            Some(v) => Ok(v.clone()),
            None => Err(format!("{name} needs a value\n{usage}")),
        };
        let r = match a.as_str() {
            "--workspace" => value(a).map(|v| opts.workspace = PathBuf::from(v)),
            "--cache-dir" => value(a).map(|v| {
                cache_set = true;
                opts.cache_dir = PathBuf::from(v)
            }),
            "--kernel-package" => value(a).map(|v| opts.kernel_package = v),
            "--modules" => value(a).map(|v| {
                opts.modules = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }),
            "--agent" => value(a).map(|v| opts.agent = Some(PathBuf::from(v))),
            "--qemu" => value(a).map(|v| opts.qemu = PathBuf::from(v)),
            "--no-template" => {
                opts.template = false;
                Ok(())
            }
            "-h" | "--help" => {
                println!("{usage}");
                return 0;
            }
            other => Err(format!("unknown argument {other:?}\n{usage}")),
        };
        if let Err(e) = r {
            eprintln!("{e}");
            return 2;
        }
    }
    if !cache_set {
        opts.cache_dir = default_cache_dir(&opts.workspace);
    }
    match build(&opts, &mut |m| eprintln!("shim-vm-image: {m}")) {
        Ok(img) => {
            println!("kernel={}", img.kernel.display());
            println!("initrd={}", img.initrd.display());
            println!("release={}", img.kernel_release);
            if let Some(t) = &img.template {
                println!("template={}", t.display());
            }
            0
        }
        Err(e) => {
            eprintln!("shim-vm-image: {e}");
            match e {
                Error::Unavailable(_) => 3,
                _ => 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_stanzas() {
        let text = "Package: linux-image-amd64\nVersion: 6.1.192-2\nDescription: x\n more\n\
                    Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nSHA256: AB\n";
        let f = parse_stanza(text);
        assert_eq!(field(&f, "Version"), Some("6.1.192-2"));
        assert_eq!(
            field(&f, "Depends").and_then(versioned_dependency),
            Some("linux-image-6.1.0-56-amd64".to_string())
        );
        assert_eq!(
            versioned_dependency("kmod, linux-base (>= 4.3~), initramfs-tools | x"),
            None
        );
        assert!(is_metapackage(Some("12")));
        assert!(!is_metapackage(Some("401000")));
        assert!(is_metapackage(None));
    }

    #[test]
    fn initramfs_layout() {
        let dir = tempfile::tempdir().unwrap();
        let ko = dir.path().join("virtio.ko");
        fs::write(&ko, crate::kmod::tests::fake_ko(&["depends="])).unwrap();
        let modules = vec![crate::kmod::Module {
            name: "virtio".into(),
            path: ko,
            depends: vec![],
        }];
        let out = dir.path().join("initramfs.cpio");
        write_initramfs(&out, b"AGENT", &modules).unwrap();
        let bytes = fs::read(&out).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "init\0",
            "dev/console\0",
            "lib/modules/virtio.ko\0",
            "lib/modules/order\0",
            "virtio.ko\n",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(name), "missing {name:?}");
        }
        assert!(!out.with_extension("tmp").exists());
    }

    #[test]
    fn static_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(check_static(&p).is_err());
        // This test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        let err = check_static(&me).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }
}
