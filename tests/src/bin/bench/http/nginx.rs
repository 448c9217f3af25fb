//! nginx (the Debian package) as a plain reverse proxy: the bench's reference for what one L7
//! hop costs. It runs in the client pod's network namespace, listening on loopback, and proxies
//! to the server pod on the other node over kept-alive HTTP/1.1 upstream connections. That is
//! the shape of the L7 pool's path: the client's bytes reach the pool over the pod's loopback
//! (the agent's in-pod :15001 capture), and the pool's upstream leaves from the pod's own
//! network namespace. What nginx does not do is mTLS and the HBONE tunnel: those are what the
//! L4 case already costs, which is why nginx's added latency is measured over direct and the
//! pool's over L4.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use weft_tests::netns;

use super::procs;

/// nginx's listeners in the client pod: HTTP/1.1, and HTTP/2 with prior knowledge (nginx 1.22
/// takes `http2` per listener: that port speaks only HTTP/2).
pub const H1_PORT: u16 = 18080;
pub const H2_PORT: u16 = 18081;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Nginx {
    child: Child,
    pub version: String,
}

/// The nginx binary: on PATH, or where Debian puts it (/usr/sbin is not on every PATH).
pub fn binary() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nginx is not installed: run `apt-get install -y nginx` (`cargo xtask bench` installs it)"
                .to_owned()
        })
}

/// The configuration: `workers` worker processes (as many as the L7 pool has, when known),
/// upstream connections kept alive and reused without a request limit, as the pool's are; a
/// buffered access log, as a production nginx has (the pool logs every request too).
fn config(dir: &Path, upstream: SocketAddr, workers: Option<usize>) -> String {
    let d = dir.display();
    let workers = workers.map_or("auto".to_owned(), |n| n.to_string());
    format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log {d}/access.log combined buffer=64k flush=1s;\n\
         keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream backend {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
         server {{\n    listen 127.0.0.1:{H1_PORT};\n    listen 127.0.0.1:{H2_PORT} http2;\n\
         location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

impl Nginx {
    /// Starts nginx in network namespace `netns` (the client pod's; not its cgroup, so the
    /// mesh never captures it), proxying to `upstream`; returns once it accepts connections.
    pub fn start(
        dir: &Path,
        netns_name: &str,
        upstream: SocketAddr,
        workers: Option<usize>,
    ) -> Result<Self, String> {
        let bin = binary()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, upstream, workers))
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        let version = Command::new(&bin)
            .arg("-v")
            .output()
            .map(|o| {
                let v = String::from_utf8_lossy(&o.stderr);
                v.trim().trim_start_matches("nginx version: ").to_owned()
            })
            .unwrap_or_default();
        let mut cmd = Command::new(&bin);
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        netns::command_in(&mut cmd, netns_name, None).map_err(|e| format!("netns: {e}"))?;
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut n = Self { child, version };
        n.wait_listening(dir, netns_name)?;
        Ok(n)
    }

    fn wait_listening(&mut self, dir: &Path, netns_name: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}): {}", log.trim()));
            }
            let up = [H1_PORT, H2_PORT].iter().all(|port| {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                netns::run_in(netns_name, move || TcpStream::connect(addr).is_ok()).unwrap_or(false)
            });
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("nginx not listening after {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(procs::descendants(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // SIGTERM: nginx's fast shutdown, the master takes its workers down with it.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_upstream_connections_alive_on_both_listeners() {
        let c = config(
            Path::new("/tmp/x"),
            "10.2.0.3:8081".parse().unwrap(),
            Some(2),
        );
        assert!(c.contains("worker_processes 2;"), "{c}");
        assert!(c.contains("server 10.2.0.3:8081; keepalive 64;"), "{c}");
        assert!(c.contains("proxy_http_version 1.1;"), "{c}");
        assert!(c.contains("proxy_set_header Connection \"\";"), "{c}");
        assert!(
            c.contains(&format!("listen 127.0.0.1:{H2_PORT} http2;")),
            "{c}"
        );
        assert!(config(Path::new("/x"), "1.2.3.4:1".parse().unwrap(), None)
            .contains("worker_processes auto;"));
    }
}
