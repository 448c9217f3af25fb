//! Reading the configuration directory: which files there are (following symlinks, as a
//! Kubernetes ConfigMap mount is made of them) and their bytes, bounded. What cannot be read is
//! returned as such, never as "no files": the caller keeps the last good version of it.
//!
//! The file system is behind `ConfigFs` so that tests can inject the errors root never gets
//! from a real one (EACCES, EMFILE).

use std::{
    collections::HashSet,
    io::{self, Read as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// How deep the directory tree is followed (a symlink loop is caught earlier, by inode).
const MAX_DIR_DEPTH: usize = 16;

/// What changes when a file's content may have changed: a ConfigMap update swaps the `..data`
/// link, so the inode changes even when size and modification time do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub modified: Option<SystemTime>,
    pub len: u64,
}

/// What a path is, symlinks followed.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    Dir { dev: u64, ino: u64 },
    File(Fingerprint),
    Other,
}

/// The file system, as the source reads it.
pub trait ConfigFs: Send + Sync {
    /// The names in a directory.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// What `path` is, symlinks followed.
    fn entry(&self, path: &Path) -> io::Result<Entry>;
    /// At most `limit` bytes of the file (a longer file returns `limit + 1` bytes).
    fn read(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>>;
}

/// The real file system.
pub struct RealFs;

impl ConfigFs for RealFs {
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }

    fn entry(&self, path: &Path) -> io::Result<Entry> {
        let meta = std::fs::metadata(path)?;
        Ok(if meta.is_dir() {
            Entry::Dir {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        } else if meta.is_file() {
            Entry::File(Fingerprint {
                dev: meta.dev(),
                ino: meta.ino(),
                modified: meta.modified().ok(),
                len: meta.len(),
            })
        } else {
            Entry::Other
        })
    }

    fn read(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        // Non-blocking open: a name swapped for a FIFO since the listing must not hang the
        // reader (for a regular file the flag changes nothing).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let mut out = Vec::new();
        file.take(limit as u64 + 1).read_to_end(&mut out)?;
        Ok(out)
    }
}

/// The directory's files and what in it could not be read.
#[derive(Debug, Default, PartialEq)]
pub struct Listing {
    /// The directory listed.
    pub root: PathBuf,
    /// Regular files, sorted, with their fingerprints.
    pub files: Vec<(PathBuf, Fingerprint)>,
    /// Directories or entries that could not be read, with the reason: whatever the last good
    /// configuration had under them is still in force.
    pub unreadable: Vec<(PathBuf, String)>,
    /// The directory's device, when it could be listed: a volume that is unmounted leaves an
    /// empty directory on another device behind.
    pub dev: Option<u64>,
}

/// Regular, non-hidden files under `dir`, recursively, symlinks followed (hidden names are
/// skipped: a ConfigMap's `..data` and `..2024_…` directories are reached through the
/// visible links to them, so each file is read once).
pub fn list(fs: &dyn ConfigFs, dir: &Path) -> Listing {
    let mut listing = Listing {
        root: dir.to_owned(),
        ..Listing::default()
    };
    let mut seen = HashSet::new();
    match fs.entry(dir) {
        Ok(Entry::Dir { dev, ino }) => {
            seen.insert((dev, ino));
            listing.dev = Some(dev);
            walk(fs, dir, 0, &mut seen, &mut listing);
        }
        Ok(_) => listing
            .unreadable
            .push((dir.to_owned(), "not a directory".into())),
        Err(e) => listing
            .unreadable
            .push((dir.to_owned(), format!("cannot read directory: {e}"))),
    }
    listing.files.sort_by(|a, b| a.0.cmp(&b.0));
    listing
}

fn walk(
    fs: &dyn ConfigFs,
    dir: &Path,
    depth: usize,
    seen: &mut HashSet<(u64, u64)>,
    out: &mut Listing,
) {
    let names = match fs.read_dir(dir) {
        Ok(n) => n,
        Err(e) => {
            out.unreadable
                .push((dir.to_owned(), format!("cannot read directory: {e}")));
            return;
        }
    };
    for path in names {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        match fs.entry(&path) {
            Ok(Entry::File(f)) => out.files.push((path, f)),
            Ok(Entry::Dir { dev, ino }) if depth < MAX_DIR_DEPTH && seen.insert((dev, ino)) => {
                walk(fs, &path, depth + 1, seen, out)
            }
            // A directory already visited (a symlink loop) or too deep: once is enough.
            Ok(Entry::Dir { .. }) | Ok(Entry::Other) => {}
            Err(e) => out.unreadable.push((path, format!("cannot read: {e}"))),
        }
    }
}

/// Test doubles.
#[cfg(test)]
pub mod fake {
    use std::{
        collections::HashMap,
        io,
        path::{Path, PathBuf},
        sync::Mutex,
    };

    use super::{ConfigFs, Entry, RealFs};

    /// The real file system, except for the paths given an error, and directories that
    /// appear on another device.
    #[derive(Default)]
    pub struct Failing {
        errors: Mutex<HashMap<PathBuf, i32>>,
        remounted: Mutex<Vec<PathBuf>>,
    }

    impl Failing {
        /// From now on, `dir` reports another device (as after an unmount).
        pub fn remount(&self, dir: &Path) {
            self.remounted.lock().unwrap().push(dir.to_owned());
        }

        /// From now on, every access to `path` fails with `errno`.
        pub fn fail(&self, path: &Path, errno: i32) {
            self.errors.lock().unwrap().insert(path.to_owned(), errno);
        }

        pub fn heal(&self) {
            self.errors.lock().unwrap().clear();
        }

        fn check(&self, path: &Path) -> io::Result<()> {
            match self.errors.lock().unwrap().get(path) {
                Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
                None => Ok(()),
            }
        }
    }

    impl ConfigFs for Failing {
        fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            self.check(dir)?;
            RealFs.read_dir(dir)
        }

        fn entry(&self, path: &Path) -> io::Result<Entry> {
            // Listing a name works even when opening it does not (EACCES, EMFILE on open).
            match RealFs.entry(path)? {
                Entry::Dir { dev, ino }
                    if self.remounted.lock().unwrap().iter().any(|d| d == path) =>
                {
                    Ok(Entry::Dir { dev: dev + 1, ino })
                }
                other => Ok(other),
            }
        }

        fn read(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
            self.check(path)?;
            RealFs.read(path, limit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_in_place_of_a_file_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cluster.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = RealFs.read(&fifo, 10).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(list(&RealFs, dir.path()).files.is_empty());
    }
}
