//! The agent's `/logging` reaches its L7 workers: a worker logs at the filter the agent was
//! last given, from the moment it changes, and a worker started after the change (a restart)
//! starts with it. Workers' stderr is the agent's, so this reads the agent's log. Run as root
//! (`cargo xtask test`).

use std::time::Duration;

use weft_tests::{eventually, features, http::curl, Agent, Ca, Pod, Topology};

const WAIT: Duration = Duration::from_secs(20);

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh, labels: {weft.dev/l7: enabled}}
spec:
  clusterIP: 10.96.0.30
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
";

/// The worker's pid once it is ready (`/config_dump` `l7_pool`); not `not` (the one replaced).
fn ready_worker(agent: &Agent, not: Option<u64>) -> u64 {
    eventually("the L7 worker ready", WAIT, || {
        let dump = agent.config_dump();
        let w = &dump["l7_pool"]["workers"][0];
        let pid = w["pid"].as_u64()?;
        (w["ready"] == true && Some(pid) != not).then_some(pid)
    })
}

/// The DEBUG lines worker `pid` wrote (its span names it: `l7_worker{worker=0 pid=PID}`).
fn debug_lines(agent: &Agent, pid: u64) -> Vec<String> {
    let span = format!(" pid={pid}}}");
    agent
        .log()
        .lines()
        .filter(|l| l.contains(" DEBUG ") && l.contains("l7_worker{") && l.contains(&span))
        .map(str::to_owned)
        .collect()
}

fn request(client: &Pod, path: &str) {
    let r = curl(client, &[&format!("http://10.96.0.30{path}")]);
    assert_eq!(r.status, 200, "{r:?}");
}

fn set_filter(agent: &Agent, filter: &str) {
    let (code, body) = agent
        .post(&format!("/logging?level={filter}"))
        .expect("POST /logging");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_log_filter_set_on_the_agent_reaches_its_workers_and_restarted_ones() {
    if !features::require(
        "a_log_filter_set_on_the_agent_reaches_its_workers_and_restarted_ones",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    let client = topo.pod(&node, "mesh", "client");
    let web = topo.pod(&node, "mesh", "web");
    topo.set_pod_label(&web.name, "app", "web");
    weft_tests::http::serve(&mut topo, &web, &[8080]);
    topo.apply("web", WEB);
    let ca = Ca::start(&topo, &node, 15012, 3600, "cluster.local");
    let agent = Agent::start_meshed(&topo, &node, &ca, &["--log", "info", "--l7-workers", "1"]);
    agent.wait_enrolled(&client);
    agent.wait_enrolled(&web);
    agent.wait_certificates();
    let first = ready_worker(&agent, None);

    // At `info` a worker's hand-offs are not logged (a response means the worker wrote what
    // it was going to write about that connection: the log writes are synchronous).
    request(&client, "/before");
    assert_eq!(debug_lines(&agent, first), Vec::<String>::new());

    set_filter(&agent, "info,mesh_agent=debug");
    request(&client, "/after");
    let seen = debug_lines(&agent, first);
    assert!(!seen.is_empty(), "no DEBUG line from worker {first}");

    // A worker started after the change starts with the filter in force.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    let second = ready_worker(&agent, Some(first));
    request(&client, "/restarted");
    assert!(
        !debug_lines(&agent, second).is_empty(),
        "no DEBUG line from the restarted worker {second}"
    );

    // And back: the worker stops logging at DEBUG.
    set_filter(&agent, "info");
    let before = debug_lines(&agent, second).len();
    request(&client, "/quiet");
    assert_eq!(
        debug_lines(&agent, second).len(),
        before,
        "DEBUG lines after the filter went back to info"
    );
}
