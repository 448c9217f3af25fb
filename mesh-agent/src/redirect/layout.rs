//! The layout version of the pinned kernel state, checked before anything is loaded, adopted
//! or detached.
//!
//! bpffs holds only pins and directories, so the version is a directory name beside `maps/`
//! and `pods/`: `layout@<VERSION>@<COMPATIBLE_FROM>` (mesh-common's `layout`). Pins written
//! before layouts were recorded are layout 1 (the same maps and structs). An agent adopts
//! pins when each side can read the other's: theirs were written for agents of
//! `COMPATIBLE_FROM` or later, ours reads `COMPATIBLE_FROM` or later; entries that changed shape
//! between the two are migrated (none yet: layout 1 is the first), then the marker says ours.
//! Otherwise the agent refuses to start, naming both layouts, with every pod still hooked by
//! the pins it found.

use std::{fs, io, path::Path};

use mesh_common::layout::{COMPATIBLE_FROM, VERSION};
use tracing::info;

use super::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub version: u32,
    pub compatible_from: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layout {} (readable by agents of layout {} and later)",
            self.version, self.compatible_from
        )
    }
}

/// This build's layout. `WEFT_TEST_LAYOUT=VERSION[,COMPATIBLE_FROM]` stands in for a build of
/// another layout in the tests (an agent built from another commit would take minutes to
/// build); nothing else reads it.
pub fn ours() -> Layout {
    let built = Layout {
        version: VERSION,
        compatible_from: COMPATIBLE_FROM,
    };
    let Some(v) = std::env::var("WEFT_TEST_LAYOUT").ok() else {
        return built;
    };
    let mut parts = v.split(',').map(|p| p.trim().parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(version)), None) => Layout {
            version,
            compatible_from: version,
        },
        (Some(Ok(version)), Some(Ok(compatible_from))) => Layout {
            version,
            compatible_from,
        },
        _ => built,
    }
}

/// The layout recorded under `pin_dir`: None for a fresh directory, layout 1 for pins from
/// before layouts were recorded.
pub fn found(pin_dir: &Path) -> io::Result<Option<Layout>> {
    let mut marker = None;
    let mut pins = false;
    let entries = match fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for e in entries {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(l) = parse(&name) {
            marker = Some(marker.map_or(l, |m: Layout| if l.version > m.version { l } else { m }));
        } else if name == "maps" || name == "pods" {
            pins |= fs::read_dir(pin_dir.join(&*name))?.next().is_some();
        }
    }
    Ok(marker.or(pins.then_some(Layout {
        version: 1,
        compatible_from: 1,
    })))
}

fn parse(name: &str) -> Option<Layout> {
    let mut p = name.strip_prefix("layout@")?.split('@');
    let version = p.next()?.parse().ok()?;
    let compatible_from = p.next()?.parse().ok()?;
    p.next().is_none().then_some(Layout {
        version,
        compatible_from,
    })
}

/// Whether an agent of layout `ours` may adopt pins of layout `theirs`.
pub fn adoptable(ours: Layout, theirs: Layout) -> bool {
    theirs.compatible_from <= ours.version && ours.compatible_from <= theirs.version
}

/// Checks the pins under `pin_dir` against this agent's layout and, when they are adoptable,
/// records ours. Runs before anything is loaded: a refusal leaves every pin as it was.
pub fn check_and_stamp(pin_dir: &Path) -> Result<Layout, Error> {
    let ours = ours();
    let io = |what| {
        let path = pin_dir.to_owned();
        move |error| Error::Io { what, path, error }
    };
    let theirs = found(pin_dir).map_err(io("reading the layout of"))?;
    if let Some(theirs) = theirs {
        if !adoptable(ours, theirs) {
            return Err(Error::Layout {
                pin_dir: pin_dir.to_owned(),
                ours,
                theirs,
            });
        }
        if theirs != ours {
            // Entries whose shape differs between the two layouts are migrated here, one step
            // at a time; layout 1 is the first, so there is nothing to move yet.
            info!(from = %theirs, to = %ours, "adopting kernel state of another layout");
        }
    }
    fs::create_dir_all(pin_dir).map_err(io("creating"))?;
    let name = format!("layout@{}@{}", ours.version, ours.compatible_from);
    fs::create_dir_all(pin_dir.join(&name)).map_err(io("recording the layout in"))?;
    for e in fs::read_dir(pin_dir).map_err(io("reading"))?.flatten() {
        let other = e.file_name().to_string_lossy().into_owned();
        if other != name && parse(&other).is_some() {
            let _ = fs::remove_dir(e.path());
        }
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(version: u32, compatible_from: u32) -> Layout {
        Layout {
            version,
            compatible_from,
        }
    }

    #[test]
    fn adoption_needs_each_side_to_read_the_other() {
        assert!(adoptable(l(1, 1), l(1, 1)));
        // One up, readable by the previous: upgrade and downgrade both work.
        assert!(adoptable(l(2, 1), l(1, 1)));
        assert!(adoptable(l(1, 1), l(2, 1)));
        // A break: neither way.
        assert!(!adoptable(l(3, 3), l(1, 1)));
        assert!(!adoptable(l(1, 1), l(3, 3)));
    }

    #[test]
    fn markers_parse_strictly() {
        assert_eq!(parse("layout@2@1"), Some(l(2, 1)));
        for bad in ["layout@2", "layout@x@1", "layout@2@1@3", "maps", "layout"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn pins_from_before_layouts_are_layout_one_and_a_fresh_dir_has_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(found(dir.path()).unwrap(), None);
        fs::create_dir_all(dir.path().join("maps/WEFT_X")).unwrap();
        assert_eq!(found(dir.path()).unwrap(), Some(l(1, 1)));
    }
}
