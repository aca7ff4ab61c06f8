//! Device access rules, modelled the way the v1 devices controller interprets them.
//!
//! OCI rules are an ordered list where later rules override earlier ones. The kernel instead
//! keeps a default (allow or deny) plus a list of exceptions, and interprets each written rule
//! against that state. Emulating the kernel gives one normalised target state that serves both
//! v1 (compute the fewest writes from the current `devices.list`, so an update never opens a
//! window where a running container loses /dev/null) and v2 (compile it into eBPF), with the
//! same semantics on both.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{CgroupError, Result};

pub(crate) const ACC_MKNOD: u8 = 1;
pub(crate) const ACC_READ: u8 = 2;
pub(crate) const ACC_WRITE: u8 = 4;
pub(crate) const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevKind {
    All,
    Char,
    Block,
}

impl DevKind {
    fn as_char(self) -> char {
        match self {
            DevKind::All => 'a',
            DevKind::Char => 'c',
            DevKind::Block => 'b',
        }
    }
}

/// One exception entry of the kernel's model; `None` numbers are wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exception {
    pub(crate) kind: DevKind,
    pub(crate) major: Option<u32>,
    pub(crate) minor: Option<u32>,
    pub(crate) access: u8,
}

impl Exception {
    fn same_device(&self, other: &Exception) -> bool {
        self.kind == other.kind && self.major == other.major && self.minor == other.minor
    }

    /// The text the devices controller reads and prints ("c 1:3 rwm").
    pub(crate) fn to_rule_string(self, access: u8) -> String {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.as_char(),
            num(self.major),
            num(self.minor),
            access_string(access)
        )
    }
}

pub(crate) fn access_string(access: u8) -> String {
    let mut s = String::new();
    if access & ACC_READ != 0 {
        s.push('r');
    }
    if access & ACC_WRITE != 0 {
        s.push('w');
    }
    if access & ACC_MKNOD != 0 {
        s.push('m');
    }
    s
}

/// The kernel's view of a cgroup's device access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceState {
    pub(crate) default_allow: bool,
    /// Kept in insertion order so writes follow the order of the spec.
    pub(crate) exceptions: Vec<Exception>,
}

/// runc appends these to every container's rules; containerd only sends "deny all" plus the
/// devices the user asked for, so without them no container could open /dev/null.
const DEFAULT_ALLOWED: &[(DevKind, Option<u32>, Option<u32>, u8)] = &[
    (DevKind::Char, None, None, ACC_MKNOD),
    (DevKind::Block, None, None, ACC_MKNOD),
    (DevKind::Char, Some(1), Some(3), ACC_ALL), // /dev/null
    (DevKind::Char, Some(1), Some(8), ACC_ALL), // /dev/random
    (DevKind::Char, Some(1), Some(7), ACC_ALL), // /dev/full
    (DevKind::Char, Some(5), Some(0), ACC_ALL), // /dev/tty
    (DevKind::Char, Some(1), Some(5), ACC_ALL), // /dev/zero
    (DevKind::Char, Some(1), Some(9), ACC_ALL), // /dev/urandom
    (DevKind::Char, Some(136), None, ACC_ALL),  // /dev/pts/*
    (DevKind::Char, Some(5), Some(2), ACC_ALL), // /dev/ptmx
    (DevKind::Char, Some(10), Some(200), ACC_ALL), // /dev/net/tun
];

impl DeviceState {
    /// A fresh state denies everything, as runc's does, so a spec without an explicit
    /// "deny all" first rule still gets an allow list.
    pub(crate) fn deny_all() -> Self {
        DeviceState {
            default_allow: false,
            exceptions: Vec::new(),
        }
    }

    /// The state an OCI rule list (followed by runc's default devices) leads to.
    pub(crate) fn from_spec(rules: &[LinuxDeviceCgroup]) -> Result<Self> {
        let mut state = Self::deny_all();
        for rule in rules {
            let Some(r) = convert_rule(rule)? else {
                continue;
            };
            state.apply(r.0, r.1);
        }
        for &(kind, major, minor, access) in DEFAULT_ALLOWED {
            state.apply(
                true,
                Exception {
                    kind,
                    major,
                    minor,
                    access,
                },
            );
        }
        Ok(state)
    }

    /// What writing the rule to devices.allow (`allow`) or devices.deny does in the kernel:
    /// "a" resets everything; a rule agreeing with the default removes access from the
    /// exactly matching exception; otherwise it adds access to one.
    pub(crate) fn apply(&mut self, allow: bool, rule: Exception) {
        if rule.kind == DevKind::All {
            self.default_allow = allow;
            self.exceptions.clear();
            return;
        }
        if allow == self.default_allow {
            if let Some(pos) = self.exceptions.iter().position(|e| e.same_device(&rule)) {
                self.exceptions[pos].access &= !rule.access;
                if self.exceptions[pos].access == 0 {
                    self.exceptions.remove(pos);
                }
            }
        } else if let Some(e) = self.exceptions.iter_mut().find(|e| e.same_device(&rule)) {
            e.access |= rule.access;
        } else if rule.access != 0 {
            self.exceptions.push(rule);
        }
    }

    /// Parses `devices.list`. In allow-by-default mode the kernel prints only "a *:* rwm" and
    /// hides the deny exceptions, so such a state is reported with none.
    pub(crate) fn parse_list(text: &str) -> Option<Self> {
        let mut state = Self::deny_all();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let e = parse_rule_string(line)?;
            if e.kind == DevKind::All {
                state.default_allow = true;
                state.exceptions.clear();
                return Some(state);
            }
            state.apply(true, e);
        }
        Some(state)
    }

    fn access_for(&self, dev: &Exception) -> u8 {
        self.exceptions
            .iter()
            .find(|e| e.same_device(dev))
            .map_or(0, |e| e.access)
    }
}

/// Turns one OCI rule into (allow, exception); `None` for rules the devices controller has no
/// notion of (fifos).
fn convert_rule(rule: &LinuxDeviceCgroup) -> Result<Option<(bool, Exception)>> {
    let kind = match rule.typ().unwrap_or_default() {
        LinuxDeviceType::A => DevKind::All,
        LinuxDeviceType::C | LinuxDeviceType::U => DevKind::Char,
        LinuxDeviceType::B => DevKind::Block,
        LinuxDeviceType::P => {
            log::warn!("ignoring device cgroup rule for fifo type: {rule}");
            return Ok(None);
        }
    };
    let access_text = rule.access().as_deref().unwrap_or("");
    let access = if access_text.is_empty() {
        ACC_ALL
    } else {
        parse_access(access_text).ok_or_else(|| CgroupError::InvalidValue {
            file: "devices".into(),
            value: rule.to_string(),
            reason: format!("access {access_text:?} must only contain r, w and m"),
        })?
    };
    let num = |n: Option<i64>, what: &str| -> Result<Option<u32>> {
        match n {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| CgroupError::InvalidValue {
                    file: "devices".into(),
                    value: rule.to_string(),
                    reason: format!("{what} number {n} is out of range"),
                }),
        }
    };
    Ok(Some((
        rule.allow(),
        Exception {
            kind,
            major: num(rule.major(), "major")?,
            minor: num(rule.minor(), "minor")?,
            access,
        },
    )))
}

fn parse_access(s: &str) -> Option<u8> {
    let mut acc = 0;
    for c in s.chars() {
        acc |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return None,
        };
    }
    Some(acc)
}

fn parse_rule_string(line: &str) -> Option<Exception> {
    let mut it = line.split_whitespace();
    let kind = match it.next()? {
        "a" => DevKind::All,
        "c" => DevKind::Char,
        "b" => DevKind::Block,
        _ => return None,
    };
    let (major, minor) = it.next()?.split_once(':')?;
    let num = |s: &str| -> Option<Option<u32>> {
        if s == "*" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    Some(Exception {
        kind,
        major: num(major)?,
        minor: num(minor)?,
        access: parse_access(it.next()?)?,
    })
}

/// The writes ("devices.allow"/"devices.deny", rule) that take a v1 cgroup from `current` to
/// `target`. Only a change of default (or an unknown current state) resets with "a"; otherwise
/// exceptions are adjusted in place so running processes keep access to what stays allowed.
pub(crate) fn v1_transition(
    current: Option<&DeviceState>,
    target: &DeviceState,
) -> Vec<(&'static str, String)> {
    let (grant, revoke) = if target.default_allow {
        ("devices.deny", "devices.allow")
    } else {
        ("devices.allow", "devices.deny")
    };
    let mut writes = Vec::new();
    let incremental = current.filter(|c| !c.default_allow && !target.default_allow);
    match incremental {
        Some(cur) => {
            for e in &cur.exceptions {
                let extra = e.access & !target.access_for(e);
                if extra != 0 {
                    writes.push((revoke, e.to_rule_string(extra)));
                }
            }
            for e in &target.exceptions {
                let missing = e.access & !cur.access_for(e);
                if missing != 0 {
                    writes.push((grant, e.to_rule_string(missing)));
                }
            }
        }
        None => {
            writes.push((revoke, "a".to_string()));
            for e in &target.exceptions {
                writes.push((grant, e.to_rule_string(e.access)));
            }
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        t: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(t)
            .access(acc);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().expect("rule")
    }

    fn defaults() -> Vec<String> {
        DEFAULT_ALLOWED
            .iter()
            .map(|&(kind, major, minor, access)| {
                Exception {
                    kind,
                    major,
                    minor,
                    access,
                }
                .to_rule_string(access)
            })
            .collect()
    }

    #[test]
    fn fresh_cgroup_gets_deny_all_then_allows_in_spec_order() {
        let rules = vec![
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(10), Some(229), "rwm"),
            rule(true, LinuxDeviceType::B, Some(8), None, "r"),
            rule(true, LinuxDeviceType::C, Some(4), Some(1), "rw"),
        ];
        let target = DeviceState::from_spec(&rules).expect("state");
        let current = DeviceState::parse_list("a *:* rwm\n").expect("list");
        let writes = v1_transition(Some(&current), &target);
        let mut expected = vec![
            ("devices.deny", "a".to_string()),
            ("devices.allow", "c 10:229 rwm".to_string()),
            ("devices.allow", "b 8:* r".to_string()),
            ("devices.allow", "c 4:1 rw".to_string()),
        ];
        expected.extend(defaults().into_iter().map(|d| ("devices.allow", d)));
        assert_eq!(writes, expected);
    }

    #[test]
    fn later_deny_removes_earlier_allow() {
        let rules = vec![
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(4), Some(1), "rwm"),
            rule(false, LinuxDeviceType::C, Some(4), Some(1), "w"),
            rule(true, LinuxDeviceType::C, Some(4), Some(2), "rwm"),
            rule(false, LinuxDeviceType::C, Some(4), Some(2), "rwm"),
        ];
        let state = DeviceState::from_spec(&rules).expect("state");
        assert!(!state.default_allow);
        assert_eq!(
            state.exceptions[0].to_rule_string(state.exceptions[0].access),
            "c 4:1 rm"
        );
        assert!(!state
            .exceptions
            .iter()
            .any(|e| e.major == Some(4) && e.minor == Some(2)));
    }

    #[test]
    fn allow_all_spec_resets_to_allow_with_deny_exceptions() {
        let rules = vec![
            rule(true, LinuxDeviceType::A, None, None, "rwm"),
            rule(false, LinuxDeviceType::C, Some(1), Some(11), "rwm"),
        ];
        let target = DeviceState::from_spec(&rules).expect("state");
        assert!(target.default_allow);
        // Default allowed devices agree with the default, so they add nothing.
        assert_eq!(target.exceptions.len(), 1);
        let writes = v1_transition(None, &target);
        assert_eq!(
            writes,
            vec![
                ("devices.allow", "a".to_string()),
                ("devices.deny", "c 1:11 rwm".to_string())
            ]
        );
    }

    #[test]
    fn update_is_incremental_when_already_deny_by_default() {
        let before =
            DeviceState::from_spec(&[rule(true, LinuxDeviceType::C, Some(4), Some(1), "rwm")])
                .expect("state");
        let listed: String = before
            .exceptions
            .iter()
            .map(|e| e.to_rule_string(e.access) + "\n")
            .collect();
        let current = DeviceState::parse_list(&listed).expect("list");
        assert_eq!(current, before);
        let after = DeviceState::from_spec(&[
            rule(true, LinuxDeviceType::C, Some(4), Some(1), "r"),
            rule(true, LinuxDeviceType::B, Some(7), Some(0), "rw"),
        ])
        .expect("state");
        assert_eq!(
            v1_transition(Some(&current), &after),
            vec![
                ("devices.deny", "c 4:1 wm".to_string()),
                ("devices.allow", "b 7:0 rw".to_string())
            ]
        );
        assert!(v1_transition(Some(&after), &after).is_empty());
    }

    #[test]
    fn bad_access_reports_rule() {
        let err =
            DeviceState::from_spec(&[rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwx")])
                .expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("c 1:3 rwx") && msg.contains("devices"),
            "{msg}"
        );
    }

    #[test]
    fn missing_access_and_negative_numbers_mean_everything() {
        let r = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(-1i64)
            .build()
            .expect("rule");
        let state = DeviceState::from_spec(&[r]).expect("state");
        assert_eq!(
            state.exceptions[0].to_rule_string(state.exceptions[0].access),
            "c *:* rwm"
        );
    }
}
