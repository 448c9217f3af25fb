//! Kernel features the tests need. A test whose feature is missing is skipped with the
//! feature's name: it prints the reason, records it where `cargo xtask test` reports skips,
//! and never counts a skip as proof that the feature works. A probe the kernel refuses for want
//! of privilege (EPERM, EACCES) says nothing about the kernel: the test fails, saying that root
//! is needed, rather than skip as if the feature were missing.

use std::io::Write as _;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

/// One kernel feature and how to probe for it.
pub struct Feature {
    pub name: &'static str,
    pub probe: fn() -> Probe,
}

/// What a probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Present,
    Missing,
    /// The kernel refused to answer this process: the error, as it said it.
    NoPrivilege(String),
}

impl From<bool> for Probe {
    fn from(present: bool) -> Self {
        if present {
            Probe::Present
        } else {
            Probe::Missing
        }
    }
}

/// A probe's result: a refusal for want of privilege is told apart from an absent feature.
fn outcome<E: std::error::Error + 'static>(r: Result<bool, E>) -> Probe {
    match r {
        Ok(present) => present.into(),
        Err(e) => match denied(&e) {
            Some(io) => Probe::NoPrivilege(format!("{e}: {io}")),
            None => Probe::Missing,
        },
    }
}

/// EPERM or EACCES anywhere in the error's chain.
fn denied<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return Some(io);
            }
        }
        next = e.source();
    }
    None
}

fn prog(t: ProgramType) -> Probe {
    outcome(is_program_supported(t))
}

fn netns_cookie_in(t: ProgramType) -> Probe {
    outcome(is_helper_supported(t, BpfHelper::BPF_FUNC_get_netns_cookie))
}

/// What capture needs: the programs, the maps and the helpers they use.
pub const CAPTURE: &[Feature] = &[
    Feature {
        name: "cgroup_sock_addr programs (connect4/6, getpeername4/6)",
        probe: || prog(ProgramType::CgroupSockAddr),
    },
    Feature {
        name: "sock_ops programs",
        probe: || prog(ProgramType::SockOps),
    },
    Feature {
        name: "sk_msg programs",
        probe: || prog(ProgramType::SkMsg),
    },
    Feature {
        name: "sk_lookup programs",
        probe: || prog(ProgramType::SkLookup),
    },
    Feature {
        name: "sockhash maps",
        probe: || outcome(is_map_supported(MapType::SockHash)),
    },
    Feature {
        name: "LPM trie maps",
        probe: || outcome(is_map_supported(MapType::LpmTrie)),
    },
    Feature {
        name: "bpf_get_netns_cookie in sock_ops",
        probe: || netns_cookie_in(ProgramType::SockOps),
    },
    Feature {
        name: "bpf_get_netns_cookie in sk_msg",
        probe: || netns_cookie_in(ProgramType::SkMsg),
    },
    Feature {
        name: "cgroup v2",
        probe: || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .is_ok_and(|m| m.contains(" - cgroup2 "))
                .into()
        },
    },
];

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip(String),
    /// The test cannot tell what the kernel has: it must fail, not skip.
    NeedsRoot(String),
}

/// Decides whether `test` can run given the features it needs.
pub fn decide(test: &str, needs: &[Feature]) -> Decision {
    decide_as(test, needs, nix::unistd::geteuid().is_root())
}

fn decide_as(test: &str, needs: &[Feature], root: bool) -> Decision {
    let needs_root = |why: &str| {
        Decision::NeedsRoot(format!(
            "{test}: integration tests need root (network namespaces, cgroups, eBPF): \
             run `sudo -E cargo xtask test`; {why}"
        ))
    };
    if !root {
        return needs_root("this process is not root");
    }
    let mut missing = Vec::new();
    for f in needs {
        match (f.probe)() {
            Probe::Present => {}
            Probe::Missing => missing.push(f.name),
            Probe::NoPrivilege(e) => return needs_root(&format!("probing {}: {e}", f.name)),
        }
    }
    if missing.is_empty() {
        Decision::Run
    } else {
        Decision::Skip(format!(
            "{test}: SKIPPED, kernel lacks {}",
            missing.join(", ")
        ))
    }
}

/// Returns true if the test may run; otherwise reports the skip and returns false. Panics
/// (fails the test) when the process lacks the privilege to find out.
pub fn require(test: &str, needs: &[Feature]) -> bool {
    match decide(test, needs) {
        Decision::Run => {
            record("WEFT_RAN_LOG", test);
            true
        }
        Decision::Skip(reason) => {
            eprintln!("{reason}");
            record("WEFT_SKIP_LOG", &reason);
            false
        }
        Decision::NeedsRoot(reason) => panic!("{reason}"),
    }
}

/// Appends a line to the file named by `var` (set by `cargo xtask test`, which counts them).
fn record(var: &str, line: &str) {
    if let Some(log) = std::env::var_os(var) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_privilege() -> Probe {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        outcome(Err::<bool, _>(aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: e,
        }))
    }

    #[test]
    fn a_missing_feature_skips_with_its_name() {
        let needs = [
            Feature {
                name: "present thing",
                probe: || Probe::Present,
            },
            Feature {
                name: "imaginary_hook programs",
                probe: || Probe::Missing,
            },
        ];
        match decide_as("t", &needs, true) {
            Decision::Skip(reason) => {
                assert!(reason.contains("imaginary_hook programs"), "{reason}");
                assert!(!reason.contains("present thing"), "{reason}");
            }
            other => panic!("a missing feature must skip the test: {other:?}"),
        }
    }

    #[test]
    fn all_present_runs() {
        let needs = [Feature {
            name: "x",
            probe: || Probe::Present,
        }];
        assert_eq!(decide_as("t", &needs, true), Decision::Run);
    }

    #[test]
    fn a_probe_refused_for_privilege_fails_and_says_root_is_needed() {
        assert!(matches!(no_privilege(), Probe::NoPrivilege(_)));
        let needs = [Feature {
            name: "sock_ops programs",
            probe: no_privilege,
        }];
        match decide_as("t", &needs, true) {
            Decision::NeedsRoot(reason) => {
                assert!(reason.contains("need root"), "{reason}");
                assert!(reason.contains("sock_ops programs"), "{reason}");
            }
            other => panic!("EPERM is not a missing kernel feature: {other:?}"),
        }
    }

    #[test]
    fn without_root_nothing_is_skipped_for_the_kernel() {
        let needs = [Feature {
            name: "x",
            probe: || Probe::Missing,
        }];
        assert!(matches!(
            decide_as("t", &needs, false),
            Decision::NeedsRoot(_)
        ));
    }

    #[test]
    fn other_probe_errors_count_as_missing() {
        let e = std::io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(outcome(Err::<bool, _>(e)), Probe::Missing);
    }
}
