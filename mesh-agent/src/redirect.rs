//! The kernel side of capture: loading Weft's eBPF object, attaching its programs to enrolled
//! pods, pinning everything under the agent's bpffs directory, and the maps the agent reads.
//!
//! Layout under the pin directory (default /sys/fs/bpf/weft):
//! - `layout@<VERSION>@<COMPATIBLE_FROM>`: the layout of what is pinned (`layout`), checked
//!   before anything is loaded.
//! - `maps/<NAME>`: every map, pinned by name; a restarted agent reuses them.
//! - `pods/<namespace>_<name>@<cgroup-inode>@<netns-inode>/<program>`: one pinned link per hook
//!   and pod (bpffs forbids dots in names, so dots in pod names become `~`). Pinned links keep a pod hooked while the agent is down, and the inodes in the name
//!   tell a restarted agent whether the links still belong to the pod's current cgroup and netns.
//!   A restarted (possibly upgraded) agent replaces them make-before-break: its own programs are
//!   linked under `...@next` first, then the old pins go and the new directory takes their name.
//!   (BPF_LINK_UPDATE would be neater, but Linux 6.18 answers ENOENT for these cgroup links.)

pub mod attach;
pub mod layout;
pub mod loader;
pub mod maps;

use std::{io, path::PathBuf};

pub use attach::PodHooks;
pub use loader::Redirect;
pub use maps::Maps;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not on a bpf filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs(PathBuf),
    #[error(
        "this mesh-agent was built without its eBPF object: run `cargo xtask build` \
         (or pass --bpf-object FILE)"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        error: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        error: aya::maps::MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("link of {name}")]
    Link {
        name: &'static str,
        #[source]
        error: aya::programs::links::LinkError,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        error: aya::pin::PinError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("invalid excluded CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 10.96.0.1/32")]
    BadCidr(String),
    #[error(
        "the kernel state pinned in {pin_dir} has {theirs}; this agent has {ours}, so it cannot \
         adopt it. Nothing was detached: the pods stay hooked by the pins (and fail closed \
         until an agent that can adopt them runs). Run an agent of a compatible layout, or \
         remove {pin_dir} to start afresh (every enrolled pod is re-enrolled)"
    )]
    Layout {
        pin_dir: PathBuf,
        ours: layout::Layout,
        theirs: layout::Layout,
    },
}

impl Error {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |error| Self::Io { what, path, error }
    }
}
