//! The most common topology: one node, an enrolled pod `client` (namespace `mesh`), a pod
//! `server` outside the mesh (namespace `plain`) serving echo on some ports, and an agent that
//! has enrolled the client.

use crate::{probe, topology::Node, Agent, Ca, Pod, Topology};

pub struct OneNode {
    // Dropped in this order: the agent before the topology it runs in.
    pub agent: Agent,
    pub client: Pod,
    pub server: Pod,
    pub node: Node,
    pub topo: Topology,
}

impl OneNode {
    pub fn new(ports: &[u16]) -> Self {
        Self::with_agent_args(ports, &[])
    }

    pub fn with_agent_args(ports: &[u16], agent_args: &[&str]) -> Self {
        let mut topo = Topology::new();
        let node = topo.node("n1");
        topo.namespace("mesh", true);
        topo.namespace("plain", false);
        let client = topo.pod(&node, "mesh", "client");
        let server = topo.pod(&node, "plain", "server");
        probe::serve(&mut topo, &server, ports);
        let agent = Agent::start_with(&topo, &node, agent_args);
        agent.wait_enrolled(&client);
        Self {
            agent,
            client,
            server,
            node,
            topo,
        }
    }
}

/// The trust domain of the meshed fixtures.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Two nodes joined by a wire, a CA on n1, meshed agents on both. `mesh/client` on n1,
/// `mesh/server` on n2 (both enrolled), `plain/plain` on n2 (not), all serving echo on 8080.
pub struct TwoNodeMesh {
    // Dropped in this order: agents and CA before the topology they run in.
    pub a1: Agent,
    pub a2: Agent,
    pub ca: Ca,
    pub client: Pod,
    pub server: Pod,
    pub plain: Pod,
    pub topo: Topology,
}

impl TwoNodeMesh {
    /// Certificates live `lifetime_secs`; `config` (file name, YAML) is applied before the
    /// agents start, so they begin with it.
    pub fn start(lifetime_secs: u64, config: &[(&str, &str)]) -> Self {
        let mut topo = Topology::new();
        let (n1, n2) = topo.two_nodes();
        topo.namespace("mesh", true);
        topo.namespace("plain", false);
        let client = topo.pod(&n1, "mesh", "client");
        let server = topo.pod(&n2, "mesh", "server");
        let plain = topo.pod(&n2, "plain", "plain");
        for p in [&client, &server, &plain] {
            probe::serve(&mut topo, p, &[8080]);
        }
        for (name, yaml) in config {
            topo.apply(name, yaml);
        }
        let ca = Ca::start(&topo, &n1, 15012, lifetime_secs, TRUST_DOMAIN);
        let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
        let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
        a1.wait_enrolled(&client);
        a2.wait_enrolled(&server);
        a1.wait_certificates();
        a2.wait_certificates();
        Self {
            a1,
            a2,
            ca,
            client,
            server,
            plain,
            topo,
        }
    }
}

impl TwoNodeMesh {
    /// A certificate for `ns/sa`, minted from this mesh's CA (valid for an hour): what a test
    /// peer presents.
    pub fn mint(&self, ns: &str, sa: &str) -> crate::peer::Minted {
        crate::peer::mint(
            &self.ca.state_dir,
            TRUST_DOMAIN,
            std::time::Duration::from_secs(3600),
            &mesh_agent::identity::Identity::new(TRUST_DOMAIN, ns, sa),
        )
    }

    /// A certificate for `ns/sa` of another trust domain (`evil.local`), from a CA of its own:
    /// what a peer from outside the mesh presents.
    pub fn mint_foreign(&self, ns: &str, sa: &str) -> crate::peer::Minted {
        crate::peer::mint(
            &self.topo.dir.join("evil-ca"),
            "evil.local",
            std::time::Duration::from_secs(3600),
            &mesh_agent::identity::Identity::new("evil.local", ns, sa),
        )
    }
}

/// The MeshConfig that chooses the tunnel between agents (`h2` or `quic`).
pub fn mesh_config(tunnel: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\n\
         metadata: {{name: default, namespace: weft-system}}\nspec: {{tunnel: {tunnel}}}\n"
    )
}

/// Applies `mesh_config(tunnel)` and waits until every agent has it in force.
pub fn set_tunnel(topo: &Topology, agents: &[&Agent], tunnel: &str) {
    topo.apply("mesh-config", &mesh_config(tunnel));
    for a in agents {
        a.wait_tunnel(tunnel);
    }
}
