//! Hitless upgrades with the L7 pool: when a node's agent is replaced, its L7 workers finish
//! their in-flight requests while the new agent's workers take every new connection. Run as
//! root (`cargo xtask test`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use weft_tests::{eventually, features, gamma};

const ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
";

fn url(path: &str) -> String {
    format!("http://{}{path}", gamma::ECHO)
}

#[test]
fn l7_workers_finish_in_flight_requests_while_the_new_agents_take_new_ones() {
    if !features::require(
        "l7_workers_finish_in_flight_requests_while_the_new_agents_take_new_ones",
        features::CAPTURE,
    ) {
        return;
    }
    let mut g = gamma::start(&[("route", ROUTE)]);
    let first = gamma::fetch(&g.client, &[&url("/")]);
    assert_eq!(first.status, 200, "{first:?}");
    // A slow request, in flight in one of n1's L7 workers when its agent is replaced.
    let client = g.client.clone();
    let slow = std::thread::spawn(move || gamma::fetch(&client, &[&url("/delay/4000")]));
    eventually(
        "the slow request to be in a worker",
        Duration::from_secs(4),
        || {
            let dump = g.a1.config_dump();
            let workers = dump["l7_pool"]["workers"].as_array()?.clone();
            workers
                .iter()
                .any(|w| w["connections"].as_u64() > Some(0))
                .then_some(())
        },
    );
    // Requests one after another through the upgrade, each its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let (client, stop) = (g.client.clone(), stop.clone());
        move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let a = gamma::fetch(&client, &[&url("/")]);
                statuses.push((a.status, a.error));
            }
            statuses
        }
    });
    let mut old = g.a1.replace();
    let after = gamma::fetch(&g.client, &[&url("/")]);
    assert_eq!(after.status, 200, "a request after the upgrade: {after:?}");
    let slow = slow.join().expect("slow request");
    assert_eq!(
        slow.status, 200,
        "the request in flight in the old agent's worker finished: {slow:?}"
    );
    stop.store(true, Ordering::SeqCst);
    let statuses = load.join().expect("load");
    assert!(
        statuses.iter().all(|(s, _)| *s == 200),
        "every request through the upgrade answered 200: {statuses:?}"
    );
    assert!(statuses.len() >= 3, "the load ran: {statuses:?}");
    // The old agent's workers drained (nothing left in flight), then the agent exited.
    let status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old agent exits once drained");
    assert!(status.success(), "{status}");
    let log = g.a1.log();
    assert!(log.contains("L7 workers drained"), "{log}");
    // The new agent's pool serves on.
    let dump = g.a1.config_dump();
    assert!(
        dump["l7_pool"]["handed"].as_u64() > Some(0),
        "new connections went to the new agent's workers: {}",
        dump["l7_pool"]
    );
    let _ = &mut g.topo;
}
