//! Enrollment from a pod's first packet: weft-cni chained after the CNI reference plugins
//! (Debian's containernetworking-plugins: bridge + host-local, and loopback), run the way a
//! runtime runs them, against real agents in file mode. The pods are sandboxes: an empty netns
//! and a cgroup, annotated in the configuration, with no `status.podIP` (at CNI ADD time the
//! address is not published yet). Run as root.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use weft_tests::{
    cni::{self, loopback, only_weft, pod_network, result_ip, timed, Runtime, Sandbox},
    eventually, features,
    fixture::TRUST_DOMAIN,
    netns, pattern, probe, wire, Agent, Ca, Client, Pod, Topology,
};

/// What the tests give ADD to wait for the agent (the default is 30 s).
const BOUND: Duration = Duration::from_secs(3);

fn sandbox(pod: &Pod) -> Sandbox {
    Sandbox {
        container_id: format!("ctr-{}-{}", pod.netns, pod.name),
        netns: netns::path(&pod.netns),
        ifname: "eth0".into(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod
            .uid
            .clone()
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", pod.name.len())),
    }
}

/// Brings up the sandbox's loopback and then the pod network, as containerd does; returns the
/// pod network's result.
fn start_pod(rt: &mut Runtime, net: &Value, pod: &Pod) -> Result<Value, cni::PluginError> {
    let lo = Sandbox {
        ifname: "lo".into(),
        ..sandbox(pod)
    };
    rt.add(&loopback(net["cniVersion"].as_str().unwrap()), &lo)
        .expect("loopback plugin");
    rt.add(net, &sandbox(pod))
}

fn started(pod: &Pod, result: &Value) -> Pod {
    Pod {
        ip: result_ip(result),
        ..pod.clone()
    }
}

/// The pod's hook pins, where the agent keeps them (`pods/<ns>_<name>@…`).
fn pins_of(agent: &Agent, pod: &Pod) -> Vec<PathBuf> {
    let prefix = format!("{}_{}@", pod.namespace, pod.name);
    std::fs::read_dir(agent.pin_dir.join("pods"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pod_started_through_weft_cni_is_meshed_from_its_first_connection() {
    if !features::require(
        "a_pod_started_through_weft_cni_is_meshed_from_its_first_connection",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let server = topo.pod(&n2, "mesh", "server");
    probe::serve(&mut topo, &server, &[8080]);
    let fresh = topo.sandbox_pod(&n1, "mesh", "fresh");
    let ca = Ca::start(&topo, &n1, 15012, 3600, TRUST_DOMAIN);
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a2.wait_enrolled(&server);
    a2.wait_certificates();
    assert!(
        a1.enrolled(&fresh).is_none(),
        "no address before CNI ADD: nothing to enroll"
    );

    let tap = wire::WireTap::start(&n1.netns, "wire0");
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(&n1, &topo.dir, "1.0.0", &a1.cni_socket(), BOUND);
    let (added, took) = timed(|| start_pod(&mut rt, &net, &fresh));
    let result = added.unwrap_or_else(|e| panic!("ADD failed: {e:?}\n{}", rt.weft_log()));
    eprintln!(
        "ADD of the chain took {took:?}, weft-cni {:?}",
        rt.weft_took("ADD")
    );
    let (bridge, weft) = (&rt.results[0], &rt.results[1]);
    assert_eq!((bridge.0.as_str(), weft.0.as_str()), ("bridge", "weft-cni"));
    assert_eq!(
        weft.1, bridge.1,
        "weft-cni passes prevResult through unchanged"
    );
    let pod = started(&fresh, &result);
    // ADD returned only once the pod was hooked: it is enrolled now, without waiting.
    let entry = a1.enrolled(&pod).expect("enrolled when ADD returned");
    assert_eq!(entry["ip"], pod.ip.to_string(), "{entry}");
    assert_eq!(
        entry["netns"],
        netns::path(&pod.netns).display().to_string()
    );
    assert!(!entry["hooks"].as_array().unwrap().is_empty(), "{entry}");

    // The pod's very first process, and its very first connection.
    let mut c = Client::start(&mut topo, &pod);
    let first = c.connect(server.addr(8080), 64 * 1024);
    assert!(first.ok() && first.intact(), "{:?}", first.raw);
    let segments = tap.finish();
    let marker: Vec<u8> = (0..64).map(pattern).collect();
    let ours: Vec<_> = segments
        .iter()
        .filter(|s| s.src == pod.ip || s.dst == pod.ip)
        .cloned()
        .collect();
    assert!(!ours.is_empty(), "the tap saw the pod's connection");
    assert!(
        ours.iter()
            .all(|s| s.dst_port == 15008 || s.src_port == 15008),
        "only HBONE from the pod: {:?}",
        ours.iter()
            .map(|s| (s.src_port, s.dst_port))
            .collect::<Vec<_>>()
    );
    assert!(
        !wire::contains(&wire::all_bytes(&ours), &marker),
        "plaintext crossed the wire"
    );
    assert!(ours.iter().any(|s| s.payload.starts_with(&[0x16, 0x03])));
    let dst = server.addr(8080).to_string();
    eventually(
        "the server agent's line for the first connection",
        Duration::from_secs(5),
        || {
            a2.access_log().into_iter().find(|l| {
                l["reporter"] == "destination"
                    && l["original_dst"] == dst.as_str()
                    && l["src"]["identity"] == "spiffe://cluster.local/ns/mesh/sa/fresh"
                    && l["connection_security_policy"] == "mutual_tls"
            })
        },
    );

    // CHECK: the sandbox's netns is hooked; another netns under the pod's name is not.
    rt.check(&net, &sandbox(&pod), &result)
        .unwrap_or_else(|e| panic!("CHECK failed: {e:?}"));
    let stray = format!("{}-stray", topo.tag);
    netns::ip(&["netns", "add", &stray]);
    let wrong = Sandbox {
        netns: netns::path(&stray),
        ..sandbox(&pod)
    };
    let e = rt
        .check(&only_weft(&net), &wrong, &result)
        .expect_err("CHECK of a netns the agent has not hooked");
    assert!(
        e.msg().contains("should be enrolled and is not") && e.msg().contains("another netns"),
        "{e:?}"
    );

    // DEL releases at once (hooks and pins gone when it returns), and again is no error.
    let pins = pins_of(&a1, &pod);
    assert_eq!(pins.len(), 1, "pinned while enrolled: {pins:?}");
    rt.del(&net, &sandbox(&pod), Some(&result))
        .unwrap_or_else(|e| panic!("DEL failed: {e:?}"));
    assert!(a1.enrolled(&pod).is_none(), "released when DEL returned");
    assert_eq!(
        pins_of(&a1, &pod),
        Vec::<PathBuf>::new(),
        "pins left after DEL"
    );
    rt.del(&net, &sandbox(&pod), Some(&result))
        .expect("a second DEL");
    let gone = Sandbox {
        netns: PathBuf::new(),
        ..sandbox(&pod)
    };
    rt.del(&only_weft(&net), &gone, None)
        .expect("DEL without a netns");
}

#[test]
fn a_kubelet_style_sandbox_is_hooked_in_its_uid_cgroup_before_it_has_a_process() {
    if !features::require(
        "a_kubelet_style_sandbox_is_hooked_in_its_uid_cgroup_before_it_has_a_process",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    topo.namespace("plain", false);
    let server = topo.pod(&n1, "plain", "server");
    probe::serve(&mut topo, &server, &[8080]);
    // No annotations, no address, an empty kubepods/pod<uid> cgroup: only CNI ADD's netns
    // and the UID say where the pod is.
    let fresh = topo.kubelet_sandbox_pod(&n1, "mesh", "fresh");
    let agent = Agent::start(&topo, &n1);
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(&n1, &topo.dir, "1.0.0", &agent.cni_socket(), BOUND);
    let result = start_pod(&mut rt, &net, &fresh)
        .unwrap_or_else(|e| panic!("ADD failed: {e:?}\n{}", rt.weft_log()));
    let pod = started(&fresh, &result);
    let entry = agent.enrolled(&pod).expect("enrolled when ADD returned");
    assert_eq!(entry["cgroup"], pod.cgroup.display().to_string(), "{entry}");
    assert_eq!(
        entry["netns"],
        netns::path(&pod.netns).display().to_string()
    );
    // The pod's first process, and its first connection: through the agent.
    let mut c = Client::start(&mut topo, &pod);
    let first = c.connect(server.addr(8080), 1024);
    assert!(first.ok() && first.intact(), "{:?}", first.raw);
    let dst = server.addr(8080).to_string();
    eventually(
        "the agent's line for the first connection",
        Duration::from_secs(5),
        || {
            agent.access_log().into_iter().find(|l| {
                // The pod by name: the agent knows its address from CNI ADD, before
                // any status.podIP.
                l["reporter"] == "source"
                    && l["original_dst"] == dst.as_str()
                    && l["src"]["pod"]["name"] == "fresh"
                    && l["src"]["ip"] == pod.ip.to_string().as_str()
            })
        },
    );
}

#[test]
fn a_restarted_agent_keeps_a_cni_started_pod_it_has_no_address_for() {
    if !features::require(
        "a_restarted_agent_keeps_a_cni_started_pod_it_has_no_address_for",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    let fresh = topo.sandbox_pod(&n1, "mesh", "fresh");
    let mut agent = Agent::start(&topo, &n1);
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(&n1, &topo.dir, "1.0.0", &agent.cni_socket(), BOUND);
    let result = start_pod(&mut rt, &net, &fresh).unwrap_or_else(|e| panic!("ADD: {e:?}"));
    let pod = started(&fresh, &result);
    // The configuration still has no status.podIP; what ADD said is kept in the state dir.
    agent.restart();
    let entry = agent.wait_enrolled(&pod);
    assert_eq!(
        entry["adopted"], true,
        "the pinned hooks taken over: {entry}"
    );
    assert_eq!(entry["ip"], pod.ip.to_string());
    rt.check(&net, &sandbox(&pod), &result)
        .unwrap_or_else(|e| panic!("CHECK after the restart: {e:?}"));
}

#[test]
fn add_waits_for_the_pods_certificate() {
    if !features::require("add_waits_for_the_pods_certificate", features::CAPTURE) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    let fresh = topo.sandbox_pod(&n1, "mesh", "fresh");
    let mut ca = Ca::start(&topo, &n1, 15012, 3600, TRUST_DOMAIN);
    let agent = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(&n1, &topo.dir, "1.0.0", &agent.cni_socket(), BOUND);
    // Hooked, but its first connection could not be carried: no certificate for it.
    ca.kill();
    let e = start_pod(&mut rt, &net, &fresh).expect_err("ADD while the CA is down");
    assert!(
        e.msg()
            .contains("hooked; its workload certificate has not come from the CA yet"),
        "{}",
        e.msg()
    );
    rt.del(&net, &sandbox(&fresh), None)
        .expect("the runtime's DEL after a failed ADD");
    // The kubelet's retry, once the CA is back.
    ca.restart(&topo);
    let patient = pod_network(
        &n1,
        &topo.dir,
        "1.0.0",
        &agent.cni_socket(),
        Duration::from_secs(20),
    );
    start_pod(&mut rt, &patient, &fresh).unwrap_or_else(|e| panic!("ADD with the CA up: {e:?}"));
    let certs = agent.config_dump()["certificates"].to_string();
    assert!(
        certs.contains("spiffe://cluster.local/ns/mesh/sa/fresh"),
        "{certs}"
    );
}

/// `weft-cni install` as the init container runs it, on a node whose CNI wrote a bridge
/// conflist: the installed chain is what the runtime then runs, and it meshes a new pod.
#[test]
fn the_installed_chain_meshes_a_new_pod_and_install_is_idempotent() {
    if !features::require(
        "the_installed_chain_meshes_a_new_pod_and_install_is_idempotent",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    let fresh = topo.sandbox_pod(&n1, "mesh", "fresh");
    let agent = Agent::start(&topo, &n1);
    let (bin_dir, conf_dir) = (topo.dir.join("opt-cni-bin"), topo.dir.join("etc-cni-net.d"));
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    let mut bridge_only = pod_network(&n1, &topo.dir, "1.0.0", &agent.cni_socket(), BOUND);
    bridge_only["plugins"].as_array_mut().unwrap().pop();
    let conflist = conf_dir.join("10-bridge.conflist");
    std::fs::write(&conflist, serde_json::to_vec_pretty(&bridge_only).unwrap()).unwrap();
    let mut rt = Runtime::with_reference_plugins(&n1, &bin_dir);
    let weft_cni = |args: &[&str]| {
        let out = std::process::Command::new(cni::weft_cni_bin())
            .args(args)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--conf-dir")
            .arg(&conf_dir)
            .output()
            .expect("run weft-cni");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "weft-cni {args:?}: {said}{err}");
        said
    };
    let socket = agent.cni_socket().display().to_string();
    let install = [
        "install",
        "--agent-socket",
        &socket,
        "--timeout-seconds",
        "3",
    ];
    let said = weft_cni(&install);
    assert!(
        said.contains("installed") && said.contains("10-bridge.conflist"),
        "{said}"
    );
    let installed: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    let types: Vec<&str> = installed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "weft-cni"]);
    assert_eq!(
        installed["plugins"][0], bridge_only["plugins"][0],
        "the bridge as it was"
    );
    let bytes = std::fs::read(&conflist).unwrap();
    assert!(weft_cni(&install).contains("already up to date"));
    assert_eq!(std::fs::read(&conflist).unwrap(), bytes, "idempotent");

    let result = start_pod(&mut rt, &installed, &fresh)
        .unwrap_or_else(|e| panic!("ADD through the installed chain: {e:?}"));
    assert!(agent.enrolled(&started(&fresh, &result)).is_some());

    weft_cni(&["uninstall"]);
    let back: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(back["plugins"], bridge_only["plugins"]);
    assert!(!bin_dir.join("weft-cni").exists());
}

#[test]
fn add_fails_within_the_bound_naming_the_agent_while_it_is_down() {
    if !features::require(
        "add_fails_within_the_bound_naming_the_agent_while_it_is_down",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    let early = topo.sandbox_pod(&n1, "mesh", "early");
    let dns = topo.sandbox_pod(&n1, "kube-system", "coredns");
    let socket = topo.dir.join("state-n1").join("cni.sock");
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(&n1, &topo.dir, "1.0.0", &socket, BOUND);

    // No agent has ever run on the node: nothing listens.
    let (added, took) = timed(|| start_pod(&mut rt, &net, &early));
    let e = added.expect_err("ADD while no agent runs");
    eprintln!("ADD without an agent failed after {took:?}: {}", e.msg());
    assert_eq!(e.plugin, "weft-cni");
    assert_eq!(e.error["code"], 11, "try again later: {:?}", e.error);
    assert!(
        e.msg().contains("pod mesh/early")
            && e.msg()
                .contains(&format!("unreachable at {}", socket.display()))
            && e.msg().contains("is mesh-agent running on this node"),
        "{}",
        e.msg()
    );
    let weft = rt.weft_took("ADD");
    assert!(
        weft >= BOUND - Duration::from_millis(250) && weft < BOUND + Duration::from_secs(2),
        "weft-cni gave up after {weft:?}, bound {BOUND:?}"
    );
    // The runtime tears the failed sandbox down (DEL), and that never fails.
    rt.del(&net, &sandbox(&early), None)
        .expect("DEL while no agent runs");
    // The cluster's own pods start regardless.
    let (dns_added, dns_took) = timed(|| start_pod(&mut rt, &net, &dns));
    dns_added.expect("an excluded namespace starts without the agent");
    assert!(
        rt.weft_took("ADD") < Duration::from_secs(1),
        "at once: {dns_took:?}"
    );

    // The kubelet retries once the agent is up: the pod starts, meshed.
    let mut agent = Agent::start(&topo, &n1);
    let result =
        start_pod(&mut rt, &net, &early).unwrap_or_else(|e| panic!("ADD with the agent up: {e:?}"));
    let pod = started(&early, &result);
    assert!(agent.enrolled(&pod).is_some());

    // An agent that died leaves its socket behind: refused, said as clearly.
    agent.kill();
    let late = topo.sandbox_pod(&n1, "mesh", "late");
    let e = start_pod(&mut rt, &net, &late).expect_err("ADD after the agent died");
    assert!(
        e.msg().contains("unreachable at") && e.msg().contains("refused"),
        "{}",
        e.msg()
    );
}

#[test]
fn add_fails_with_the_agents_reason_when_it_cannot_hook_the_pod() {
    if !features::require(
        "add_fails_with_the_agents_reason_when_it_cannot_hook_the_pod",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    let broken = topo.sandbox_pod(&n1, "mesh", "broken");
    // Its annotated cgroup does not exist: the hooks cannot be attached.
    std::fs::remove_dir(&broken.cgroup).expect("remove the pod's cgroup");
    let agent = Agent::start(&topo, &n1);
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(&n1, &topo.dir, "1.0.0", &agent.cni_socket(), BOUND);
    let e = start_pod(&mut rt, &net, &broken).expect_err("ADD of a pod that cannot be hooked");
    eprintln!("ADD failed after {:?}: {}", rt.weft_took("ADD"), e.msg());
    assert!(
        e.msg().contains("not done within")
            && e.msg().contains("enrolling pod mesh/broken")
            && e.msg().contains(&broken.cgroup.display().to_string()),
        "{}",
        e.msg()
    );
    assert!(rt.weft_took("ADD") < BOUND + Duration::from_secs(2));
    assert!(agent.enrolled(&broken).is_none());
}

#[test]
fn add_waits_for_a_pod_the_configuration_has_not_shown_yet() {
    if !features::require(
        "add_waits_for_a_pod_the_configuration_has_not_shown_yet",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    let lagging = topo.sandbox_pod(&n1, "mesh", "lagging");
    topo.set_pod_shown("lagging", false);
    let agent = Agent::start(&topo, &n1);
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(
        &n1,
        &topo.dir,
        "0.4.0",
        &agent.cni_socket(),
        Duration::from_secs(20),
    );
    let (pod, net2) = (lagging.clone(), net.clone());
    let adding = std::thread::spawn(move || {
        let r = start_pod(&mut rt, &net2, &pod);
        (r, rt)
    });
    // The agent has the request (and is holding it) before the pod appears.
    eventually(
        "the agent to take the ADD up",
        Duration::from_secs(10),
        || {
            agent
                .log()
                .lines()
                .any(|l| l.contains("cni add") && l.contains("mesh/lagging"))
                .then_some(())
        },
    );
    assert!(!adding.is_finished(), "ADD must wait for the pod");
    topo.set_pod_shown("lagging", true);
    let (result, rt) = adding.join().expect("ADD thread");
    let result = result.unwrap_or_else(|e| panic!("ADD: {e:?}\n{}", rt.weft_log()));
    assert!(agent.enrolled(&started(&lagging, &result)).is_some());
}

#[test]
fn a_pod_outside_enrolled_namespaces_passes_at_once_untouched() {
    if !features::require(
        "a_pod_outside_enrolled_namespaces_passes_at_once_untouched",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    topo.namespace("plain", false);
    let other = topo.sandbox_pod(&n1, "plain", "other");
    let agent = Agent::start(&topo, &n1);
    let mut rt = Runtime::new(&n1, &topo.dir);
    let net = pod_network(
        &n1,
        &topo.dir,
        "0.4.0",
        &agent.cni_socket(),
        Duration::from_secs(20),
    );
    let result = start_pod(&mut rt, &net, &other).unwrap_or_else(|e| panic!("ADD: {e:?}"));
    let took = rt.weft_took("ADD");
    eprintln!("weft-cni ADD of a pod outside the mesh took {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "at once, not after a wait: {took:?}"
    );
    assert_eq!(rt.results[1].1, rt.results[0].1, "result unchanged");
    assert!(
        rt.weft_log().contains("NotMeshed")
            && rt.weft_log().contains("not labelled weft.dev/mesh=enabled"),
        "{}",
        rt.weft_log()
    );
    let pod = started(&other, &result);
    assert!(agent.enrolled(&pod).is_none());
    assert!(pins_of(&agent, &pod).is_empty(), "no hooks for it");
    rt.check(&net, &sandbox(&pod), &result)
        .expect("CHECK of a pod outside the mesh");
    rt.del(&net, &sandbox(&pod), Some(&result)).expect("DEL");
}
