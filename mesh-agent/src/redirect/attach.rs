//! Attaching the per-pod hooks: connect4/6, getpeername4/6 and sock_ops on the pod's cgroup,
//! sk_lookup on its netns. Links are used throughout: a cgroup link never displaces another
//! program (the kernel runs all linked programs), so `Single` here is not exclusive, and the
//! kernel rejects attach flags on link creation. Each link is pinned, so the pod stays hooked (and fails closed)
//! while the agent is down, and a restarted agent adopts the links instead of attaching twice.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps};
use mesh_common::programs;
use tracing::{info, warn};

use super::{loader::program, Error, Redirect};
use crate::netns::Netns;

/// Attaches a cgroup program (CgroupSockAddr or SockOps: same shape, no shared trait in aya)
/// and hands back its link, ready to pin.
macro_rules! cgroup_link {
    ($prog:expr, $name:expr, $cg:expr) => {{
        let name = $name;
        let err = |error| Error::Program { name, error };
        $prog
            .attach($cg, CgroupAttachMode::Single)
            .map_err(err)
            .and_then(|id| $prog.take_link(id).map_err(err))
            .and_then(|link| FdLink::try_from(link).map_err(|error| Error::Link { name, error }))
    }};
}

/// Hooks attached per pod, in attach order.
const CGROUP_SOCK_ADDR: [&str; 4] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
];
const ALL_HOOKS: [&str; 6] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SOCK_OPS,
    programs::SK_LOOKUP,
];

/// A pod's hooks. Their pins keep them attached, with or without an agent running;
/// [`Redirect::detach_pod`] removes the pins and so detaches them.
#[derive(Debug)]
pub struct PodHooks {
    pub dir: PathBuf,
    /// True when an earlier agent had pinned them and this one took them over.
    pub adopted: bool,
}

impl PodHooks {
    pub fn names(&self) -> &'static [&'static str] {
        &ALL_HOOKS
    }
}

impl Redirect {
    /// Attaches the hooks of one pod, taking over (make-before-break) any an earlier agent pinned
    /// for the same cgroup and netns. `key` names the pod (namespace_name).
    pub fn attach_pod(
        &mut self,
        key: &str,
        cgroup: &Path,
        netns: &Netns,
    ) -> Result<PodHooks, Error> {
        let cg = File::open(cgroup).map_err(Error::io("opening cgroup", cgroup))?;
        let cg_ino = cg.metadata().map_err(Error::io("stat", cgroup))?.ino();
        let ns_ino = fs::metadata(netns.path())
            .map_err(Error::io("stat", netns.path()))?
            .ino();
        let dir = self.pods_dir.join(format!("{key}@{cg_ino}@{ns_ino}"));
        self.remove_stale(key, &dir);
        let adopted = ALL_HOOKS.iter().all(|name| dir.join(name).exists());
        // Make before break: link this agent's programs first, then drop the old links.
        let next = dir.with_file_name(format!("{key}@{cg_ino}@{ns_ino}@next"));
        let _ = fs::remove_dir_all(&next);
        fs::create_dir_all(&next).map_err(Error::io("creating", &next))?;
        if let Err(e) = self.attach_all(&next, &cg, netns) {
            // Pinned links are detached by removing their pins: leave nothing half-attached.
            let _ = fs::remove_dir_all(&next);
            return Err(e);
        }
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&next, &dir).map_err(Error::io("renaming", &next))?;
        if adopted {
            info!(pod = key, "took over hooks pinned by an earlier agent");
        }
        Ok(PodHooks { dir, adopted })
    }

    fn attach_all(&mut self, dir: &Path, cg: &File, netns: &Netns) -> Result<(), Error> {
        for name in CGROUP_SOCK_ADDR {
            let p = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
            pin(cgroup_link!(p, name, cg)?, dir, name)?;
        }
        let name = programs::SOCK_OPS;
        let p = program::<SockOps>(&mut self.ebpf, name)?;
        pin(cgroup_link!(p, name, cg)?, dir, name)?;

        let name = programs::SK_LOOKUP;
        let ns = File::open(netns.path()).map_err(Error::io("opening netns", netns.path()))?;
        let p = program::<SkLookup>(&mut self.ebpf, name)?;
        let err = |error| Error::Program { name, error };
        let id = p.attach(ns).map_err(err)?;
        let link: FdLink = p.take_link(id).map_err(err)?.into();
        pin(link, dir, name)?;
        Ok(())
    }

    /// Detaches a pod's hooks by removing their pins (the kernel detaches a link when its last
    /// reference goes).
    pub fn detach_pod(&self, hooks: PodHooks) {
        if let Err(e) = fs::remove_dir_all(&hooks.dir) {
            warn!(dir = %hooks.dir.display(), error = %e, "removing pinned hooks");
        }
    }

    /// Keys (namespace_name) of pods that have pinned hooks, e.g. from before a restart.
    pub fn pinned_pods(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.pods_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.split('@').next().map(str::to_owned))
            .collect()
    }

    /// Detaches every pinned hook set of a pod (used for pods no longer enrolled).
    pub fn detach_pinned(&self, key: &str) {
        self.remove_stale(key, Path::new(""));
    }

    /// Removes pinned hook sets of `key` other than `keep` (a pod recreated with a new cgroup
    /// or netns under the same name).
    fn remove_stale(&self, key: &str, keep: &Path) {
        let Ok(entries) = fs::read_dir(&self.pods_dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let name = e.file_name();
            let is_pod = name.to_str().and_then(|n| n.split('@').next()) == Some(key);
            if is_pod && path != keep {
                info!(pod = key, dir = %path.display(), "detaching stale hooks");
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// Pins a link; the pin, not the agent, keeps it attached from here on.
fn pin(link: FdLink, dir: &Path, name: &str) -> Result<(), Error> {
    let path = dir.join(name);
    link.pin(&path)
        .map(drop)
        .map_err(|error| Error::Pin { path, error })
}
