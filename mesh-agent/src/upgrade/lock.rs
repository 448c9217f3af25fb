//! The hand-over lock: an exclusive flock on `<state-dir>/handover.lock`, held by an agent from
//! its start until it has taken over and published its own hand-over socket. A second new
//! agent waits here, then takes over from the first. The kernel drops the lock with the
//! process, so a crashed agent never leaves it held.

use std::{fs::File, io, path::Path};

use nix::fcntl::{Flock, FlockArg};
use tracing::info;

pub struct Lock(#[allow(dead_code)] Flock<File>);

/// Takes the lock, waiting (on this thread) for another agent's hand-over to finish.
pub fn take(dir: &Path) -> io::Result<Lock> {
    let path = dir.join(super::LOCK);
    let open = || {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    };
    match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => return Ok(Lock(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
        Err((_, e)) => return Err(e.into()),
    }
    info!(lock = %path.display(), "another agent is taking over on this node; waiting for it");
    Flock::lock(open()?, FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| e.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_taker_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::take(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        let t = std::thread::spawn(move || {
            let _second = super::take(&path).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("taken after the first let go");
        t.join().unwrap();
    }
}
