//! `meshctl upgrade-check`: the configuration as the new version would read it, before any
//! agent is replaced. The upgrade users fear is the one that silently starts rejecting objects
//! the old version took: this runs the new version's validator (its `meshctl validate`) on the
//! live configuration and lists every object it rejects that this version accepts.
//!
//! The new validator is run as a program and its `error: ...` lines compared with this
//! version's, so any later version works, whatever else its output holds.

use std::{collections::BTreeSet, path::Path, process::Command};

use crate::source::load_dir;

/// What the two versions say about one configuration.
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    /// Rejected by the new version only: what the upgrade would break.
    pub newly_rejected: Vec<String>,
    /// Rejected by both (already broken, unchanged).
    pub still_rejected: Vec<String>,
    /// Rejected by this version only (the new one accepts them).
    pub accepted_now: Vec<String>,
}

impl Comparison {
    pub fn of(current: &BTreeSet<String>, new: &BTreeSet<String>) -> Self {
        Self {
            newly_rejected: new.difference(current).cloned().collect(),
            still_rejected: new.intersection(current).cloned().collect(),
            accepted_now: current.difference(new).cloned().collect(),
        }
    }
}

/// This version's errors for `path` (a file or directory), one line each.
pub fn current_errors(path: &Path) -> BTreeSet<String> {
    let loaded = load_dir(path);
    loaded
        .unreadable
        .iter()
        .chain(&loaded.errors)
        .map(|e| e.to_string())
        .collect()
}

/// The new version's errors for `path`, from its `validate -f PATH`.
pub fn new_errors(binary: &Path, path: &Path) -> Result<BTreeSet<String>, String> {
    let out = Command::new(binary)
        .args(["validate", "-f"])
        .arg(path)
        .output()
        .map_err(|e| format!("running {} validate: {e}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let errors: BTreeSet<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .map(str::to_owned)
        .collect();
    // It must have read the configuration: its summary line, or errors on failure.
    let summarised = stdout.lines().any(|l| l.contains(" error(s); "));
    if !summarised {
        return Err(format!(
            "{} validate did not report on the configuration (exit {}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_rejections_are_told_apart_from_old_ones() {
        let c = Comparison::of(&set(&["a", "b"]), &set(&["b", "c"]));
        assert_eq!(c.newly_rejected, ["c"]);
        assert_eq!(c.still_rejected, ["b"]);
        assert_eq!(c.accepted_now, ["a"]);
        assert_eq!(Comparison::of(&set(&[]), &set(&[])), Comparison::default());
    }
}
