//! Part 4 of the bench (`http`): what an HTTP request costs on each path, in one run, on the
//! two-node topology of part 2 (client pod on n1, server pod on n2). Cases:
//!
//! - `direct`: a pod outside the mesh to a pod outside the mesh;
//! - `weft L4`: enrolled pod to enrolled pod by pod IP, a port without an HTTP protocol, so
//!   the agents carry it at L4 (mTLS HBONE over HTTP/2);
//! - `weft L7`: enrolled pod to a Service port with `appProtocol: http` that an HTTPRoute
//!   binds, so the source agent hands the connection to its L7 pool (one L7 hop);
//! - `weft L7 both ends`: the same to a Service labelled `weft.dev/l7: enabled` in front of a
//!   pod of its own, so both nodes' pools handle each request (the source's routes and
//!   reports, the destination's enforces and reports): what the destination hop costs;
//! - `nginx`: the unmeshed pod through nginx as a plain reverse proxy in its own network
//!   namespace (see `nginx.rs` for the placement): the reference for one L7 hop.
//!
//! Workloads, HTTP/1.1 keep-alive and HTTP/2 prior knowledge, 1 KiB request and response:
//! latency at a fixed rate (open loop) and the maximum rate with a fixed concurrency
//! (`load.rs`). Rounds interleave the cases (rotating their order) and the table reports
//! medians of rounds. A case that answers anything but 2xx is reported FAILED with what it
//! answered, never as figures; so is an L7 case the pool did not serve (no worker CPU spent).

#[path = "http/load.rs"]
pub mod load;
#[path = "http/nginx.rs"]
mod nginx;
#[path = "http/procs.rs"]
mod procs;
#[path = "http/report.rs"]
mod report;
#[path = "http/server.rs"]
pub mod server;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};
use weft_tests::{eventually, netns, Agent, Pod, TwoNodeMesh};

use report::{Costs, Sample};

/// Request and response bodies.
pub const BODY_BYTES: usize = 1024;
/// The bench's HTTP servers listen here in every server pod (the echo servers have 8080).
const HTTP_PORT: u16 = 8081;
const SERVICE_VIP: &str = "10.96.0.80:80";
/// The L7 case's Service: an HTTP port in front of pod mesh/web, bound by an HTTPRoute, so the
/// source node's pool routes each request (one L7 hop, as nginx is) and the destination takes
/// it at L4. (A `weft.dev/l7: enabled` label would send it through the destination node's
/// pool too: two hops: Service `web-both`, in front of pod mesh/web2, is that case.)
const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: mesh
spec:
  clusterIP: 10.96.0.80
  selector: {app: bench-web}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-both
  namespace: mesh
  labels: {weft.dev/l7: enabled}
spec:
  clusterIP: 10.96.0.81
  selector: {app: bench-web2}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
";
const BOTH_VIP: &str = "10.96.0.81:80";
const WARMUP_REQUESTS: usize = 256;

#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    pub rate: u64,
    pub concurrency: usize,
    pub latency_secs: u64,
    pub rps_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    L4,
    L7,
    /// L7 at both ends: the source's pool and the destination's.
    L7Both,
    Nginx,
}

struct Case {
    name: &'static str,
    kind: Kind,
    /// Where the load generator runs.
    pod: Pod,
    /// Where it sends HTTP/1.1 and HTTP/2.
    h1: SocketAddr,
    h2: SocketAddr,
    host: String,
    /// Why the case cannot run at all (nginx missing).
    unavailable: Option<String>,
}

/// Everything the phase starts; dropped in field order, the topology last.
struct Bench {
    nginx: Option<nginx::Nginx>,
    servers: Vec<Child>,
    m: TwoNodeMesh,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

pub fn http(opts: &Options) -> Value {
    let (mut bench, cases) = setup();
    let mut samples: Vec<[Vec<Sample>; 2]> = cases.iter().map(|_| Default::default()).collect();
    let mut failed: Vec<[Option<String>; 2]> = cases
        .iter()
        .map(|c| [c.unavailable.clone(), c.unavailable.clone()])
        .collect();
    for round in 0..opts.rounds {
        for (p, h2) in [false, true].into_iter().enumerate() {
            for k in 0..cases.len() {
                let i = (k + round) % cases.len();
                if failed[i][p].is_some() {
                    continue;
                }
                match measure(&bench, &cases[i], h2, opts) {
                    Ok(s) => samples[i][p].push(s),
                    Err(why) => failed[i][p] = Some(why),
                }
            }
        }
        eprintln!("http: round {} of {} done", round + 1, opts.rounds);
    }
    let memory = Memory::read(&bench);
    let rows: Vec<report::Row> = cases
        .iter()
        .zip(samples)
        .zip(failed)
        .map(|((c, s), f)| report::Row::new(c.name, c.kind, s, f))
        .collect();
    let out = report::print(opts, &rows, &memory.json());
    bench.nginx.take();
    out
}

fn setup() -> (Bench, Vec<Case>) {
    let mut m = TwoNodeMesh::start(24 * 3600, &[]);
    let n1 = m.topo.node_named("n1").clone();
    let n2 = m.topo.node_named("n2").clone();
    let pclient = m.topo.pod(&n1, "plain", "pclient");
    let web = m.topo.pod(&n2, "mesh", "web");
    let web2 = m.topo.pod(&n2, "mesh", "web2");
    m.topo.set_pod_label("web", "app", "bench-web");
    m.topo.set_pod_label("web2", "app", "bench-web2");
    m.topo.apply("bench-http", SERVICE);
    m.a2.wait_enrolled(&web);
    m.a2.wait_enrolled(&web2);
    m.a2.wait_certificates();
    wait_service(&m.a1, "web");
    wait_service(&m.a1, "web-both");
    wait_service(&m.a2, "web-both");
    let servers = [&m.plain, &m.server, &web, &web2]
        .into_iter()
        .map(serve)
        .collect();
    let workers = procs::l7_workers(m.a1.pid().expect("agent n1")).len();
    let nginx = nginx::Nginx::start(
        &m.topo.dir.join("nginx"),
        &pclient.netns,
        m.plain.addr(HTTP_PORT),
        (workers > 0).then_some(workers),
    );
    let vip: SocketAddr = SERVICE_VIP.parse().expect("vip");
    let direct = |name, kind, pod: &Pod, addr: SocketAddr, host: String| Case {
        name,
        kind,
        pod: pod.clone(),
        h1: addr,
        h2: addr,
        host,
        unavailable: None,
    };
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let cases = vec![
        direct(
            "direct",
            Kind::Direct,
            &pclient,
            m.plain.addr(HTTP_PORT),
            m.plain.addr(HTTP_PORT).to_string(),
        ),
        direct(
            "weft L4",
            Kind::L4,
            &m.client,
            m.server.addr(HTTP_PORT),
            m.server.addr(HTTP_PORT).to_string(),
        ),
        direct(
            "weft L7 pool",
            Kind::L7,
            &m.client,
            vip,
            "web.mesh.svc.cluster.local".into(),
        ),
        direct(
            "weft L7 both ends",
            Kind::L7Both,
            &m.client,
            BOTH_VIP.parse().expect("vip"),
            "web-both.mesh.svc.cluster.local".into(),
        ),
        Case {
            h1: loopback(nginx::H1_PORT),
            h2: loopback(nginx::H2_PORT),
            unavailable: nginx.as_ref().err().map(|e| format!("nginx: {e}")),
            ..direct(
                "nginx",
                Kind::Nginx,
                &pclient,
                vip,
                m.plain.addr(HTTP_PORT).to_string(),
            )
        },
    ];
    let bench = Bench {
        nginx: nginx.ok(),
        servers,
        m,
    };
    (bench, cases)
}

/// Waits until the agent has Service `name` in its state.
fn wait_service(agent: &Agent, name: &str) {
    eventually(
        &format!("Service {name} applied"),
        Duration::from_secs(15),
        || {
            agent.config_dump()["state"]["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["key"]["name"] == name))
                .then_some(())
        },
    );
}

/// Starts the bench's HTTP server in `pod`; returns once it listens.
fn serve(pod: &Pod) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["http-serve", &HTTP_PORT.to_string()])
        .stdout(Stdio::piped());
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let mut child = cmd.spawn().expect("start http server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("http server readiness line");
    assert_eq!(
        line.trim(),
        "ready",
        "http server in {} did not start",
        pod.name
    );
    child
}

/// CPU seconds of each process of interest, to take differences around one measurement.
struct Cpu {
    agents: f64,
    workers: [BTreeMap<u32, f64>; 2],
    nginx: f64,
}

impl Cpu {
    fn read(b: &Bench) -> Self {
        let workers = [&b.m.a1, &b.m.a2].map(|a| {
            procs::l7_workers(a.pid().expect("agent running"))
                .into_iter()
                .filter_map(|p| Some((p, procs::cpu_secs(p)?)))
                .collect()
        });
        Self {
            agents: b.m.a1.usage().0 + b.m.a2.usage().0,
            workers,
            nginx: b
                .nginx
                .as_ref()
                .map_or(0.0, |n| procs::total_cpu(&n.pids())),
        }
    }

    /// What was spent since `before`; a worker that appeared meanwhile counts from zero.
    fn since(&self, before: &Cpu) -> Costs {
        let workers = [0, 1].map(|i| {
            self.workers[i]
                .iter()
                .map(|(p, c)| c - before.workers[i].get(p).unwrap_or(&0.0))
                .sum::<f64>()
        });
        Costs {
            agents: self.agents - before.agents,
            workers,
            worker_count: [self.workers[0].len(), self.workers[1].len()],
            nginx: self.nginx - before.nginx,
        }
    }
}

/// One run of the load generator for `case` and protocol; Err says why the case failed.
fn measure(b: &Bench, case: &Case, h2: bool, opts: &Options) -> Result<Sample, String> {
    let spec = load::Spec {
        addr: if h2 { case.h2 } else { case.h1 },
        h2,
        host: case.host.clone(),
        rate: opts.rate,
        latency_secs: opts.latency_secs as f64,
        concurrency: opts.concurrency,
        rps_secs: opts.rps_secs as f64,
        warmup: WARMUP_REQUESTS,
    };
    let before = Cpu::read(b);
    let report = run_load(&case.pod, &spec);
    let costs = Cpu::read(b).since(&before);
    if report["ok"] != true {
        return Err(report["failure"].as_str().unwrap_or("no report").to_owned());
    }
    match case.kind {
        Kind::L7 => check_pool_served(b, &costs, &[0])?,
        Kind::L7Both => check_pool_served(b, &costs, &[0, 1])?,
        _ => {}
    }
    Ok(Sample { report, costs })
}

/// An L7 case counts only if the pools of `nodes` (0: n1, 1: n2) served it: otherwise its
/// figures would be L4's.
fn check_pool_served(b: &Bench, costs: &Costs, nodes: &[usize]) -> Result<(), String> {
    for &n in nodes {
        let (name, agent) = [("n1", &b.m.a1), ("n2", &b.m.a2)][n];
        if costs.worker_count[n] == 0 {
            return Err(format!(
                "no `mesh-agent l7` worker runs under agent {name} (pid {}): the requests were \
                 answered 2xx without the L7 pool, i.e. at L4",
                agent.pid().unwrap_or(0)
            ));
        }
        if costs.workers[n] <= 0.0 {
            return Err(format!(
                "the {} L7 worker(s) of {name} used no CPU: the requests did not pass the pool",
                costs.worker_count[n]
            ));
        }
    }
    Ok(())
}

fn run_load(pod: &Pod, spec: &load::Spec) -> Value {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.arg("http-load").args(spec.to_args());
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let out = cmd.output().expect("run http load generator");
    if !out.status.success() {
        return json!({"ok": false, "failure": format!("load generator failed ({}): {}",
            out.status, String::from_utf8_lossy(&out.stderr).trim())});
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        json!({"ok": false, "failure": format!("load generator said {:?}: {e}",
            String::from_utf8_lossy(&out.stdout))})
    })
}

/// Resident memory of the L7 workers (per node) and of nginx, at the end of the phase.
struct Memory {
    workers: [Vec<(u32, u64, u64)>; 2],
    nginx: Vec<(u32, u64, u64)>,
    nginx_version: String,
}

impl Memory {
    fn read(b: &Bench) -> Self {
        let mem = |pids: Vec<u32>| -> Vec<(u32, u64, u64)> {
            pids.into_iter()
                .filter_map(|p| Some((p, procs::rss_kib(p)?, procs::hwm_kib(p)?)))
                .collect()
        };
        Self {
            workers: [&b.m.a1, &b.m.a2]
                .map(|a| mem(procs::l7_workers(a.pid().expect("agent running")))),
            nginx: b.nginx.as_ref().map(|n| mem(n.pids())).unwrap_or_default(),
            nginx_version: b
                .nginx
                .as_ref()
                .map(|n| n.version.clone())
                .unwrap_or_default(),
        }
    }

    fn json(&self) -> Value {
        let list = |v: &[(u32, u64, u64)]| -> Value {
            v.iter()
                .map(|(p, rss, hwm)| json!({"pid": p, "rss_kib": rss, "peak_rss_kib": hwm}))
                .collect()
        };
        json!({
            "l7_workers": {"n1": list(&self.workers[0]), "n2": list(&self.workers[1])},
            "nginx": list(&self.nginx),
            "nginx_version": self.nginx_version,
        })
    }
}
