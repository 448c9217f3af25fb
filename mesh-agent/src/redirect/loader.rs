//! Loads the eBPF object once per agent start, reusing pinned maps, and attaches the programs
//! whose attachment is global (sk_msg on the sockhash).

use std::{borrow::Cow, fs, path::Path};

use aya::{
    maps::SockHash,
    programs::{CgroupSockAddr, SkLookup, SkMsg, SockOps},
    Ebpf, EbpfLoader,
};
use mesh_common::{maps as names, programs, PairKey};
use tracing::info;

use super::{Error, Maps};
use crate::config::AgentConfig;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[cfg(weft_embedded_bpf)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(env!("WEFT_BPF_OBJECT_PATH"));

pub struct Redirect {
    pub(super) ebpf: Ebpf,
    pub(super) pods_dir: std::path::PathBuf,
    pub maps: std::sync::Arc<Maps>,
}

impl Redirect {
    pub fn load(cfg: &AgentConfig) -> Result<Self, Error> {
        let pin_dir = &cfg.bpf_pin_dir;
        require_bpffs(pin_dir)?;
        let layout = super::layout::check_and_stamp(pin_dir)?;
        let maps_dir = pin_dir.join("maps");
        let pods_dir = pin_dir.join("pods");
        for dir in [&maps_dir, &pods_dir] {
            fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let object = object(cfg)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(&object)?;
        load_programs(&mut ebpf)?;
        attach_sk_msg(&mut ebpf)?;
        let maps = Maps::take(&mut ebpf)?;
        maps.set_exclusions(&cfg.excluded_cidrs, &cfg.excluded_ports)?;
        maps.set_splice(cfg.splice)?;
        info!(pin_dir = %pin_dir.display(), layout = layout.version, "ebpf programs loaded, maps pinned");
        Ok(Self {
            ebpf,
            pods_dir,
            maps: std::sync::Arc::new(maps),
        })
    }
}

fn object(cfg: &AgentConfig) -> Result<Cow<'static, [u8]>, Error> {
    if let Some(path) = &cfg.bpf_object {
        return Ok(Cow::Owned(
            fs::read(path).map_err(Error::io("reading eBPF object", path))?,
        ));
    }
    #[cfg(weft_embedded_bpf)]
    return Ok(Cow::Borrowed(EMBEDDED));
    #[cfg(not(weft_embedded_bpf))]
    Err(Error::NoObject)
}

/// Pins only work on bpffs; say so plainly instead of failing later with EPERM.
fn require_bpffs(pin_dir: &Path) -> Result<(), Error> {
    let mut probe = pin_dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let fs = nix::sys::statfs::statfs(probe).map_err(|e| Error::Io {
        what: "statfs",
        path: probe.to_owned(),
        error: e.into(),
    })?;
    if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(Error::NoBpffs(probe.to_owned()));
    }
    Ok(())
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
    p.try_into().map_err(|error| Error::Program { name, error })
}

fn load_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    let err = |name| move |error| Error::Program { name, error };
    for name in [
        programs::CONNECT4,
        programs::CONNECT6,
        programs::GETPEERNAME4,
        programs::GETPEERNAME6,
    ] {
        program::<CgroupSockAddr>(ebpf, name)?
            .load()
            .map_err(err(name))?;
    }
    program::<SockOps>(ebpf, programs::SOCK_OPS)?
        .load()
        .map_err(err(programs::SOCK_OPS))?;
    program::<SkMsg>(ebpf, programs::SK_MSG)?
        .load()
        .map_err(err(programs::SK_MSG))?;
    program::<SkLookup>(ebpf, programs::SK_LOOKUP)?
        .load()
        .map_err(err(programs::SK_LOOKUP))?;
    Ok(())
}

/// sk_msg attaches to the (pinned) sockhash itself. The attachment is left in place when the
/// agent exits: sockets already spliced keep working, and the next agent replaces it.
fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<(), Error> {
    let map_err = |error| Error::Map {
        name: names::SOCKS,
        error,
    };
    let socks = ebpf
        .map(names::SOCKS)
        .ok_or(Error::MissingMap(names::SOCKS))?;
    let socks: SockHash<_, PairKey> = SockHash::try_from(socks).map_err(map_err)?;
    let map_fd = socks.fd().try_clone().map_err(|e| Error::Io {
        what: "duplicating map fd",
        path: names::SOCKS.into(),
        error: e,
    })?;
    let prog = program::<SkMsg>(ebpf, programs::SK_MSG)?;
    let err = |error| Error::Program {
        name: programs::SK_MSG,
        error,
    };
    let id = prog.attach(&map_fd).map_err(err)?;
    let link = prog.take_link(id).map_err(err)?;
    std::mem::forget(link);
    Ok(())
}
