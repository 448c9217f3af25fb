//! Entering a pod's network namespace. Sockets keep the netns they were created in, so the agent
//! creates its in-pod listeners and onward sockets while the calling thread is briefly inside the
//! pod's netns, then returns. Nothing awaits while a thread is switched.
//!
//! A thread must never stay in a pod's netns: it is a runtime worker, and whatever it creates
//! next would belong to that pod. So the way back is taken even when the closure panics, and a
//! failed return aborts the process (the next agent adopts the pinned state).

use std::{
    fmt,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{setns, CloneFlags};
use serde::Serialize;

pub mod discover;
pub mod ports;
pub mod sockdiag;
pub mod socket;
pub mod transparent;

/// The agent's own (node) network namespace, captured before any thread switches.
fn host_netns() -> &'static File {
    static HOST: OnceLock<File> = OnceLock::new();
    HOST.get_or_init(|| File::open("/proc/self/ns/net").expect("open /proc/self/ns/net"))
}

/// Call once at start, on the main thread, before any thread enters a pod's netns.
pub fn init() {
    host_netns();
}

/// What names a network namespace for as long as it lives: the device and inode of its nsfs
/// file. Paths do not (a /proc/PID path dies with its process; another PID may show the same
/// netns), so enrollment compares these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

impl NetnsId {
    /// The netns a path (a /proc/PID/ns/net or a bind mount under /run/netns) refers to.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        Ok(Self::from_meta(&std::fs::metadata(path)?))
    }

    pub fn of_file(file: &File) -> io::Result<Self> {
        Ok(Self::from_meta(&file.metadata()?))
    }

    /// The node's own netns (the agent's).
    pub fn node() -> io::Result<Self> {
        Self::of_file(host_netns())
    }

    fn from_meta(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    id: NetnsId,
    cookie: u64,
}

impl Netns {
    /// Opens a netns by path (e.g. /run/netns/NAME or /proc/PID/ns/net).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let id = NetnsId::of_file(&file)?;
        let mut ns = Self {
            file,
            path: path.to_owned(),
            id,
            cookie: 0,
        };
        ns.cookie = ns.probe_cookie()?;
        Ok(ns)
    }

    /// A netns handed over as an open file descriptor (an L7 worker gets the pod's from the
    /// agent). Its path is the descriptor's /proc entry, valid while this handle lives.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let file = File::from(fd);
        let id = NetnsId::of_file(&file)?;
        let mut ns = Self {
            file,
            path,
            id,
            cookie: 0,
        };
        ns.cookie = ns.probe_cookie()?;
        Ok(ns)
    }

    fn probe_cookie(&self) -> io::Result<u64> {
        self.run(|| {
            let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            netns_cookie(&probe)
        })?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The netns this handle holds (it stays the same whatever happens to the path).
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// The kernel's cookie for this netns: the key eBPF maps use to tell pods apart.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` on this thread inside the netns, then switches back to the node's netns.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        switched(self.file.as_fd(), host_netns().as_fd(), f)
    }
}

/// The netns file, e.g. to pass it to an L7 worker.
impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Enters `target`, runs `f`, returns to `home`, also when `f` panics. An error entering leaves
/// the thread where it was; a failure to return aborts the process.
fn switched<T>(target: BorrowedFd, home: BorrowedFd, f: impl FnOnce() -> T) -> io::Result<T> {
    setns(target, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let _back = ReturnHome(home);
    Ok(f())
}

/// Takes the thread back to the node's netns when dropped (on return and on unwind).
struct ReturnHome<'a>(BorrowedFd<'a>);

impl Drop for ReturnHome<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0, CloneFlags::CLONE_NEWNET) {
            // This thread would create every later socket in a pod's netns: in the wrong pod,
            // with the wrong source address. No way to continue safely.
            tracing::error!(
                error = %e,
                "cannot return to the node's network namespace; aborting"
            );
            std::process::abort();
        }
    }
}

/// SO_NETNS_COOKIE (Linux 5.14+): the cookie of the netns a socket lives in.
#[allow(unsafe_code)]
pub fn netns_cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // Safety: cookie and len are valid for writes of the sizes given; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The netns the calling thread is in.
    fn thread_netns() -> NetnsId {
        NetnsId::of_path(Path::new("/proc/thread-self/ns/net")).unwrap()
    }

    /// A fresh netns (needs CAP_SYS_ADMIN); None, with the reason printed, without it.
    fn new_netns() -> Option<File> {
        std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| eprintln!("skipped: unshare(CLONE_NEWNET) needs root: {e}"))
                .ok()?;
            File::open("/proc/thread-self/ns/net").ok()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_namespace_that_cannot_be_entered_is_an_error_and_the_thread_stays_home() {
        let before = thread_netns();
        let not_a_netns = File::open("/dev/null").unwrap();
        let err = switched(not_a_netns.as_fd(), host_netns().as_fd(), || ()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        assert_eq!(thread_netns(), before);
    }

    #[test]
    fn a_panic_inside_the_pod_namespace_still_returns_the_thread() {
        let Some(pod) = new_netns() else { return };
        let pod_id = NetnsId::of_file(&pod).unwrap();
        let home = thread_netns();
        assert_ne!(pod_id, home);
        let seen = std::panic::catch_unwind(|| {
            switched(pod.as_fd(), host_netns().as_fd(), || {
                assert_eq!(thread_netns(), pod_id, "inside the pod's netns");
                panic!("a socket option failed");
            })
        });
        assert!(seen.is_err());
        assert_eq!(
            thread_netns(),
            home,
            "the thread is back in the node's netns"
        );
        // And the ordinary path: in, then out.
        let inside = switched(pod.as_fd(), host_netns().as_fd(), thread_netns).unwrap();
        assert_eq!((inside, thread_netns()), (pod_id, home));
    }

    /// Child half of the test below: a return that fails must abort, never continue.
    #[test]
    #[ignore = "run by failed_return_aborts_the_process in a child process"]
    fn child_return_to_a_bad_home() {
        let Some(pod) = new_netns() else { return };
        let bad_home = File::open("/dev/null").unwrap();
        let _ = switched(pod.as_fd(), bad_home.as_fd(), || ());
        // Reaching this line means a thread went on inside the pod's netns.
        std::process::exit(3);
    }

    #[test]
    fn failed_return_aborts_the_process() {
        use std::os::unix::process::ExitStatusExt as _;
        if new_netns().is_none() {
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "netns::tests::child_return_to_a_bad_home",
                "--ignored",
                "--nocapture",
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
