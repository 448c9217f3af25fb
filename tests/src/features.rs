//! Kernel features the tests need. A test whose feature is missing is skipped with the
//! feature's name: it prints the reason, records it where `cargo xtask test` reports skips,
//! and never counts a skip as proof that the feature works.

use std::io::Write as _;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

/// One kernel feature and how to probe for it.
pub struct Feature {
    pub name: &'static str,
    pub probe: fn() -> bool,
}

fn prog(t: ProgramType) -> bool {
    is_program_supported(t).unwrap_or(false)
}

fn netns_cookie_in(t: ProgramType) -> bool {
    is_helper_supported(t, BpfHelper::BPF_FUNC_get_netns_cookie).unwrap_or(false)
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
        probe: || is_map_supported(MapType::SockHash).unwrap_or(false),
    },
    Feature {
        name: "LPM trie maps",
        probe: || is_map_supported(MapType::LpmTrie).unwrap_or(false),
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
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.contains(" - cgroup2 "))
        },
    },
];

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip(String),
}

/// Decides whether `test` can run given the features it needs.
pub fn decide(test: &str, needs: &[Feature]) -> Decision {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|f| !(f.probe)())
        .map(|f| f.name)
        .collect();
    if missing.is_empty() {
        Decision::Run
    } else {
        Decision::Skip(format!(
            "{test}: SKIPPED, kernel lacks {}",
            missing.join(", ")
        ))
    }
}

/// Returns true if the test may run; otherwise reports the skip and returns false.
pub fn require(test: &str, needs: &[Feature]) -> bool {
    match decide(test, needs) {
        Decision::Run => true,
        Decision::Skip(reason) => {
            eprintln!("{reason}");
            if let Some(log) = std::env::var_os("WEFT_SKIP_LOG") {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                {
                    let _ = writeln!(f, "{reason}");
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_skips_with_its_name() {
        let needs = [
            Feature {
                name: "present thing",
                probe: || true,
            },
            Feature {
                name: "imaginary_hook programs",
                probe: || false,
            },
        ];
        match decide("t", &needs) {
            Decision::Skip(reason) => {
                assert!(reason.contains("imaginary_hook programs"), "{reason}");
                assert!(!reason.contains("present thing"), "{reason}");
            }
            Decision::Run => panic!("a missing feature must not run the test"),
        }
    }

    #[test]
    fn all_present_runs() {
        let needs = [Feature {
            name: "x",
            probe: || true,
        }];
        assert_eq!(decide("t", &needs), Decision::Run);
    }
}
