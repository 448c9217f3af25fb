//! The most common topology: one node, an enrolled pod `client` (namespace `mesh`), a pod
//! `server` outside the mesh (namespace `plain`) serving echo on some ports, and an agent that
//! has enrolled the client.

use crate::{probe, topology::Node, Agent, Pod, Topology};

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
