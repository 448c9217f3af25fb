//! Entering a pod's network namespace. Sockets keep the netns they were created in, so the agent
//! creates its in-pod listeners and onward sockets while the calling thread is briefly inside the
//! pod's netns, then returns. Nothing awaits while a thread is switched.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{setns, CloneFlags};

pub mod discover;
pub mod socket;

/// The agent's own (node) network namespace, captured before any thread switches.
fn host_netns() -> &'static File {
    static HOST: OnceLock<File> = OnceLock::new();
    HOST.get_or_init(|| File::open("/proc/self/ns/net").expect("open /proc/self/ns/net"))
}

/// Call once at start, on the main thread, before any thread enters a pod's netns.
pub fn init() {
    host_netns();
}

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    cookie: u64,
}

impl Netns {
    /// Opens a netns by path (e.g. /run/netns/NAME or /proc/PID/ns/net).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let mut ns = Self {
            file,
            path: path.to_owned(),
            cookie: 0,
        };
        ns.cookie = ns.run(|| {
            let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            netns_cookie(&probe)
        })??;
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cookie for this netns: the key eBPF maps use to tell pods apart.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` on this thread inside the netns, then switches back to the node's netns.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        // Failing to return would leave this thread creating sockets in a pod: not recoverable.
        setns(host_netns().as_fd(), CloneFlags::CLONE_NEWNET)
            .expect("return to the node network namespace");
        Ok(out)
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
