//! Running code and commands inside a named network namespace (/run/netns/NAME).
//! `ip netns exec` is avoided: it remounts /sys and hides the cgroup2 mount.

use std::{fs::File, io, os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use nix::sched::{setns, CloneFlags};

pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `f` on a fresh thread that has entered the netns; sockets it creates stay there.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(path(name))?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(f())
    })
    .join()
    .expect("netns thread panicked")
}

/// Makes `cmd` start inside the netns and, if given, inside a cgroup v2 directory.
pub fn command_in(cmd: &mut Command, netns: &str, cgroup: Option<PathBuf>) -> io::Result<()> {
    let ns = File::open(path(netns))?;
    let procs = cgroup
        .map(|c| {
            std::ffi::CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes())
        })
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cgroup path has NUL"))?;
    // Safety: between fork and exec the closure only makes raw syscalls (setns, open, write,
    // close) on data prepared before the fork; it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Writing "0" moves the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// `ip ARGS`, panicking with the command on failure (topology setup must not half-succeed).
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads an nftables ruleset (`nft -f -`) inside a netns.
pub fn nft(netns: &str, ruleset: &str) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft (apt-get install nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ruleset.as_bytes())
        .expect("write ruleset");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft in {netns}: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets a sysctl inside a netns (/proc/sys/net is per netns).
pub fn sysctl(netns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    run_in(netns, move || std::fs::write(&path, value))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("sysctl {key} in {netns}: {e}"));
}
