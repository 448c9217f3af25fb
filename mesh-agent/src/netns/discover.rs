//! Kubernetes mode: finding an enrolled pod's cgroup and network namespace from the node, given
//! only its UID (the agent runs with hostPID and the host's cgroup root mounted).
//!
//! 1. The pod's cgroup: the kubelet names it after the UID, under its kubepods hierarchy —
//!    `pod<uid>` with the cgroupfs driver (`/kubepods/burstable/pod1234-...`), or
//!    `kubepods-<qos>-pod<uid with _ for ->.slice` with the systemd driver. The search runs in
//!    the cgroup v2 hierarchy (cgroup BPF hooks need v2; on a hybrid node that is the unified
//!    mount): it finds the directory whose name carries the UID in either form.
//! 2. A process of the pod: the first PID in `cgroup.procs` of that directory or of its
//!    container children (the sandbox's pause process shares the pod's netns, as does every
//!    container of a pod that is not hostNetwork).
//! 3. Its netns: `/proc/<pid>/ns/net`. Looked up again on every call (a cached PID may have
//!    exited, or been reused by a process of another pod); enrollment compares the netns by
//!    inode, so another process of the same pod names the same netns, and the open file keeps
//!    the netns alive when the pod has no process for a while.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

/// How deep under the cgroup root a pod's cgroup may be (kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod….slice is depth 3).
const MAX_DEPTH: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPaths {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
}

pub struct Locator {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    /// UID → the pod's cgroup directory (the tree walk is the expensive step).
    cgroups: HashMap<String, PathBuf>,
}

impl Locator {
    pub fn new(cgroup_root: PathBuf, proc_root: PathBuf) -> Self {
        Self {
            cgroup_root,
            proc_root,
            cgroups: HashMap::new(),
        }
    }

    /// The node's cgroup v2 mount (from /proc/self/mountinfo) and /proc.
    pub fn for_this_node() -> io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let root = cgroup2_mount(&mountinfo).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy is mounted")
        })?;
        Ok(Self::new(root, PathBuf::from("/proc")))
    }

    /// The netns and cgroup of the pod with `uid`; errors say which step failed.
    pub fn locate(&mut self, uid: &str) -> Result<PodPaths, String> {
        let cgroup = self.cgroup_of(uid)?;
        let pid = first_pid(&cgroup)
            .ok_or_else(|| format!("no process in pod cgroup {} yet", cgroup.display()))?;
        let netns = self.proc_root.join(pid.to_string()).join("ns/net");
        Ok(PodPaths { netns, cgroup })
    }

    /// The pod-level cgroup directory of the pod with `uid`, by its name alone: the kubelet
    /// makes it before the sandbox, so it is there at CNI ADD, when no process is in it yet.
    pub fn cgroup_of(&mut self, uid: &str) -> Result<PathBuf, String> {
        if let Some(c) = self.cgroups.get(uid).filter(|c| c.is_dir()) {
            return Ok(c.clone());
        }
        let cgroup = find_pod_cgroup(&self.cgroup_root, uid).ok_or_else(|| {
            format!(
                "no cgroup named after pod UID {uid} under {} (kubelet with cgroup v2?)",
                self.cgroup_root.display()
            )
        })?;
        self.cgroups.insert(uid.to_owned(), cgroup.clone());
        Ok(cgroup)
    }

    /// Forgets pods that are gone.
    pub fn retain(&mut self, uids: &[&str]) {
        self.cgroups.retain(|uid, _| uids.contains(&uid.as_str()));
    }
}

/// The mount point of the cgroup2 filesystem in a mountinfo listing.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split_whitespace().next() == Some("cgroup2"))
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

fn names_pod(dir_name: &str, uid: &str) -> bool {
    let systemd_uid = uid.replace('-', "_");
    dir_name == format!("pod{uid}")
        || (dir_name.ends_with(".slice") && dir_name.contains(&format!("-pod{systemd_uid}.slice")))
}

fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let mut frontier = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = frontier.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name();
            if names_pod(&name.to_string_lossy(), uid) {
                return Some(e.path());
            }
            if depth + 1 < MAX_DEPTH {
                frontier.push((e.path(), depth + 1));
            }
        }
    }
    None
}

/// The lowest PID in the pod's cgroup or its containers' (deterministic across calls).
fn first_pid(cgroup: &Path) -> Option<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids.into_iter().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8c6b4f3e-2d1a-4b5c-9e8f-7a6b5c4d3e2f";

    fn tree(dirs: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (dir, procs) in dirs {
            let d = root.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        }
        root
    }

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let systemd_uid = UID.replace('-', "_");
        let systemd = tree(&[
            ("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podffff.slice", "7\n"),
            (
                &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice"),
                "",
            ),
            (
                &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-aaaa.scope"),
                "4242\n4243\n",
            ),
            (
                &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-bbbb.scope"),
                "4100\n",
            ),
        ]);
        let mut l = Locator::new(systemd.path().into(), "/proc".into());
        let p = l.locate(UID).unwrap();
        assert!(p
            .cgroup
            .ends_with(format!("kubepods-burstable-pod{systemd_uid}.slice")));
        assert_eq!(
            p.netns,
            PathBuf::from("/proc/4100/ns/net"),
            "the lowest PID"
        );

        let cgroupfs = tree(&[
            ("kubepods/besteffort/pod1111", "9\n"),
            (&format!("kubepods/pod{UID}/0123abcd"), "555\n"),
        ]);
        let mut l = Locator::new(cgroupfs.path().into(), "/host/proc".into());
        let p = l.locate(UID).unwrap();
        assert!(p.cgroup.ends_with(format!("kubepods/pod{UID}")));
        assert_eq!(p.netns, PathBuf::from("/host/proc/555/ns/net"));
    }

    #[test]
    fn a_pid_that_left_the_pod_is_not_trusted_again() {
        let pod = format!("kubepods/pod{UID}");
        let cgroups = tree(&[(&pod, "300\n"), (&format!("{pod}/ctr"), "200\n")]);
        // Every PID has a /proc entry: PID 200 is reused by a process outside the pod.
        let proc_root = tree(&[("200/ns", ""), ("300/ns", "")]);
        for pid in ["200", "300"] {
            std::fs::write(proc_root.path().join(pid).join("ns/net"), "").unwrap();
        }
        let mut l = Locator::new(cgroups.path().into(), proc_root.path().into());
        assert_eq!(
            l.locate(UID).unwrap().netns,
            proc_root.path().join("200/ns/net")
        );
        std::fs::write(cgroups.path().join(&pod).join("ctr/cgroup.procs"), "").unwrap();
        assert_eq!(
            l.locate(UID).unwrap().netns,
            proc_root.path().join("300/ns/net"),
            "a process still in the pod's cgroup"
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let empty = tree(&[("kubepods", "")]);
        let mut l = Locator::new(empty.path().into(), "/proc".into());
        assert!(l
            .locate(UID)
            .unwrap_err()
            .contains("no cgroup named after pod UID"));
        let no_procs = tree(&[(&format!("kubepods/pod{UID}"), "")]);
        let mut l = Locator::new(no_procs.path().into(), "/proc".into());
        assert!(l
            .locate(UID)
            .unwrap_err()
            .contains("no process in pod cgroup"));
        // What CNI ADD needs: the directory, with no process in it yet.
        assert_eq!(
            l.cgroup_of(UID).unwrap(),
            no_procs.path().join(format!("kubepods/pod{UID}"))
        );
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "24 29 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}
