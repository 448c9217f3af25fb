//! Kubernetes-mode enrollment on a real node: a pod known only by its UID (no netns or cgroup
//! annotations) is found by the agent from the kubelet-style cgroup named after the UID, a
//! process in it and that process's /proc/PID/ns/net, then captured. Run as root.

use weft_tests::{features, probe, Agent, Client, Topology};

#[test]
fn a_pod_known_by_uid_is_found_on_the_node_and_captured() {
    if !features::require(
        "a_pod_known_by_uid_is_found_on_the_node_and_captured",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    topo.namespace("plain", false);
    let client = topo.kubelet_pod(&node, "mesh", "client");
    let server = topo.pod(&node, "plain", "server");
    probe::serve(&mut topo, &server, &[8080]);
    let agent = Agent::start(&topo, &node);
    // No process in the pod's cgroup yet: not enrollable, and the agent says why.
    weft_tests::eventually(
        "the reason in /config_dump",
        std::time::Duration::from_secs(10),
        || {
            let dump = agent.config_dump();
            let why = dump["enrollment_errors"]["mesh/client"]
                .as_str()?
                .to_owned();
            why.contains("no process in pod cgroup").then_some(())
        },
    );

    let mut c = Client::start(&mut topo, &client);
    let enrolled = agent.wait_enrolled(&client);
    let uid = client.uid.as_deref().unwrap();
    assert!(
        enrolled["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(&format!("kubepods/pod{uid}")),
        "{enrolled}"
    );
    let netns = enrolled["netns"].as_str().unwrap();
    assert!(
        netns.starts_with("/proc/") && netns.ends_with("/ns/net"),
        "{enrolled}"
    );

    let r = c.connect(server.addr(8080), 64 * 1024);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(
        r.local().ip().to_string(),
        "127.0.0.1",
        "captured: the connect was rewritten to the agent's listener"
    );
    assert_eq!(
        r.server_saw_peer().ip(),
        client.ip,
        "the server sees the pod's own IP"
    );
}
