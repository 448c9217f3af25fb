//! AuthorizationPolicy enforced by the destination's agent with the verified identity: a denied
//! connection is reset promptly and the agent names the policy; a live change lets it through.
//! Run as root (`cargo xtask test`).

use std::time::{Duration, Instant};

use weft_tests::{eventually, features, Client, TwoNodeMesh};

fn only_from(principal: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: server-allowlist, namespace: mesh}}\n\
         spec:\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [\"{principal}\"]}}}}]}}]\n"
    )
}

#[test]
fn an_allow_policy_denies_other_principals_by_name_and_changes_live() {
    if !features::require(
        "an_allow_policy_denies_other_principals_by_name_and_changes_live",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(
        3600,
        &[("policy", &only_from("cluster.local/ns/mesh/sa/other"))],
    );
    let mut c = Client::start(&mut m.topo, &m.client);
    let started = Instant::now();
    let denied = c.connect(m.server.addr(8080), 1024);
    assert!(
        !denied.ok(),
        "the client is not in the allowlist: {:?}",
        denied.raw
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused promptly, not a hang"
    );
    eventually(
        "the denial in the server agent's log",
        Duration::from_secs(5),
        || {
            m.a2.log()
                .lines()
                .any(|l| {
                    l.contains("connection denied by authorization policy")
                        && l.contains("principal=\"cluster.local/ns/mesh/sa/client\"")
                        && l.contains("server-allowlist")
                })
                .then_some(())
        },
    );

    // The policy changes live to allow the client: the next connection goes through.
    m.topo
        .apply("policy", &only_from("cluster.local/ns/mesh/sa/client"));
    let allowed = eventually("the new policy in force", Duration::from_secs(10), || {
        let r = c.connect(m.server.addr(8080), 64 * 1024);
        r.ok().then_some(r)
    });
    assert!(allowed.intact(), "{:?}", allowed.raw);

    // Plaintext has no principal: a pod outside the mesh is denied by the same allowlist.
    let mut outside = Client::start(&mut m.topo, &m.plain);
    let r = outside.connect(m.server.addr(8080), 16);
    assert!(!r.ok(), "{:?}", r.raw);
}
