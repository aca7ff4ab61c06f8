//! Linux capabilities: names from the spec to numbers, and the five sets applied.

use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::error::{Error, Result};

const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The highest capability this kernel knows (caps above it cannot be dropped or raised).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// A set as a bit mask. oci-spec parses names into its enum; we go through the name so the
/// table above stays the one source of numbers.
fn mask(set: Option<&Capabilities>) -> Result<u64> {
    let mut m = 0u64;
    for c in set.into_iter().flatten() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        let n = NAMES
            .iter()
            .position(|x| *x == name)
            .ok_or_else(|| Error::Spec(format!("unknown capability {name}")))?;
        m |= 1 << n;
    }
    Ok(m)
}

/// The sets as masks, computed before anything is dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    pub fn from_spec(caps: &LinuxCapabilities) -> Result<CapSets> {
        Ok(CapSets {
            bounding: mask(caps.bounding().as_ref())?,
            effective: mask(caps.effective().as_ref())?,
            permitted: mask(caps.permitted().as_ref())?,
            inheritable: mask(caps.inheritable().as_ref())?,
            ambient: mask(caps.ambient().as_ref())?,
        })
    }

    /// Drops from the bounding set everything not in it (needs CAP_SETPCAP, so before the
    /// user change).
    pub fn apply_bounding(&self) -> Result<()> {
        for cap in 0..=last_cap() {
            if self.bounding & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
                {
                    return Err(Error::io(
                        format!(
                            "dropping capability {}",
                            NAMES.get(cap as usize).unwrap_or(&"?")
                        ),
                        std::io::Error::last_os_error(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sets effective, permitted and inheritable, then raises the ambient set.
    pub fn apply_sets(&self) -> Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const V3: u32 = 0x2008_0522;
        let mut hdr = Header {
            version: V3,
            pid: 0,
        };
        let split = |m: u64| (m as u32, (m >> 32) as u32);
        let (e0, e1) = split(self.effective);
        let (p0, p1) = split(self.permitted);
        let (i0, i1) = split(self.inheritable);
        let data = [
            Data {
                effective: e0,
                permitted: p0,
                inheritable: i0,
            },
            Data {
                effective: e1,
                permitted: p1,
                inheritable: i1,
            },
        ];
        // SAFETY: capset with a v3 header and two data structs, as the ABI requires.
        if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
            return Err(Error::io(
                "setting capabilities",
                std::io::Error::last_os_error(),
            ));
        }
        for cap in 0..=last_cap() {
            if self.ambient & (1 << cap) != 0 {
                // SAFETY: prctl with integer arguments. Failure (cap not permitted and
                // inheritable) is ignored as runc does.
                unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    )
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(NAMES[0], "CAP_CHOWN");
        assert_eq!(NAMES[21], "CAP_SYS_ADMIN");
        assert_eq!(NAMES[40], "CAP_CHECKPOINT_RESTORE");
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"]}"#,
        )
        .unwrap();
        let s = CapSets::from_spec(&caps).unwrap();
        assert_eq!(s.bounding, 1 | (1 << 5));
        assert_eq!(s.effective, 1 << 5);
        assert_eq!(s.permitted, 0);
    }
}
