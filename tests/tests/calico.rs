//! Beside a Calico-style global DENY-ALL: nftables on both nodes drop all pod-to-pod traffic
//! except the listed pair (mesh/client → mesh/server) on the tunnel port 15008, TCP and UDP —
//! what deploy/kubernetes/network-policy.yaml allows. Meshed traffic of the allowed pair flows;
//! a pair the policy does not list stays denied through the mesh, because the agent opens its
//! tunnels from inside the source pod's netns with the pod's own IP: Weft never bypasses
//! NetworkPolicy. Run as root (`cargo xtask test`).

use std::time::Duration;

use weft_tests::{eventually, features, netns, Client, TwoNodeMesh};

fn deny_all_except(client: &str, server: &str) -> String {
    format!(
        "table inet calico_emulation {{\n\
           chain forward {{\n\
             type filter hook forward priority 0; policy drop;\n\
             ct state established,related accept\n\
             ip saddr {client} ip daddr {server} tcp dport 15008 accept\n\
             ip saddr {client} ip daddr {server} udp dport 15008 accept\n\
           }}\n\
         }}\n"
    )
}

#[test]
fn a_global_deny_all_stays_in_force_through_the_mesh() {
    if !features::require(
        "a_global_deny_all_stays_in_force_through_the_mesh",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let n1 = m.topo.node_named("n1").clone();
    let other = m.topo.pod(&n1, "mesh", "other");
    m.a1.wait_enrolled(&other);
    let rules = deny_all_except(&m.client.ip.to_string(), &m.server.ip.to_string());
    for node in m.topo.nodes().to_vec() {
        netns::nft(&node.netns, &rules);
    }

    // The listed pair, meshed: through the tunnel port the policy allows.
    let mut client = Client::start(&mut m.topo, &m.client);
    let r = client.connect(m.server.addr(8080), 256 * 1024);
    assert!(r.intact(), "allowed pair through the mesh: {:?}", r.raw);
    assert_eq!(r.server(), "server");

    // Same destination, same mesh, a source the policy does not list: the agent's tunnel
    // leaves from mesh/other's IP and is dropped like any packet of that pod.
    let mut intruder = Client::start(&mut m.topo, &other);
    let r = intruder.connect(m.server.addr(8080), 64);
    assert!(
        !r.ok(),
        "a pair the NetworkPolicy denies stays denied: {:?}",
        r.raw
    );
    eventually(
        "the failed tunnel in n1's log",
        Duration::from_secs(5),
        || {
            m.a1.access_log().into_iter().find(|l| {
                l["src"]["pod"]["name"] == "other"
                    && l["verdict"] == "error"
                    && l["response_flags"] == "UF"
            })
        },
    );
    assert!(
        !m.a2.log().contains(&format!("src={}", other.ip)),
        "nothing from mesh/other reached the server's node"
    );

    // The listed source to a port the policy does not open (plain TCP to a pod outside the
    // mesh): dropped too; the mesh does not turn it into an allowed tunnel.
    let r = client.connect(m.plain.addr(8080), 64);
    assert!(!r.ok(), "plain TCP outside the listed port: {:?}", r.raw);

    // And the allowed pair still works afterwards.
    assert!(client.connect(m.server.addr(8080), 1024).intact());
}
