//! Egress: what enrolled pods may reach outside the mesh. Under MeshConfig's REGISTRY_ONLY a
//! destination that is neither a pod nor a Service of the cluster must be listed by a
//! ServiceEntry: one of its addresses (IP or CIDR) or the addresses its hosts resolve to, on
//! one of its ports. Under ALLOW_ANY (the default) everything passes as plain TCP.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::{OutboundMode, State};
use crate::{crd, policy::matching::in_block};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<u16>,
}

impl ServiceEntry {
    pub fn from_crd(se: crd::ServiceEntry) -> Self {
        Self {
            namespace: se.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: se.metadata.name.unwrap_or_default(),
            hosts: se.spec.hosts,
            addresses: se.spec.addresses,
            ports: se.spec.ports.iter().map(|p| p.number).collect(),
        }
    }

    /// Whether `dst` is this entry's: an address or a resolved host, and a port.
    fn lists(&self, dst: SocketAddr, resolved: &HashMap<String, Vec<IpAddr>>) -> bool {
        self.ports.contains(&dst.port())
            && (self.addresses.iter().any(|a| in_block(a, dst.ip()))
                || self
                    .hosts
                    .iter()
                    .any(|h| resolved.get(h).is_some_and(|ips| ips.contains(&dst.ip()))))
    }
}

/// Why an outbound connection may leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressVerdict {
    /// ALLOW_ANY.
    AllowAny,
    /// A pod or a Service of the cluster.
    InRegistry,
    /// Listed by this ServiceEntry (`namespace/name`).
    ServiceEntry(String),
    /// REGISTRY_ONLY and nothing lists it.
    Refused(String),
}

impl State {
    /// Decides an outbound connection to `dst` (after Service resolution: an endpoint) under
    /// the mesh's outbound policy. `resolved` holds the addresses of ServiceEntry hosts.
    pub fn egress(
        &self,
        dst: SocketAddr,
        resolved: &HashMap<String, Vec<IpAddr>>,
    ) -> EgressVerdict {
        if self.mesh.outbound == OutboundMode::AllowAny {
            return EgressVerdict::AllowAny;
        }
        if self.pod_by_ip(dst.ip()).is_some() || self.by_vip.contains_key(&(dst.ip(), dst.port())) {
            return EgressVerdict::InRegistry;
        }
        match self.service_entries.values().find(|e| e.lists(dst, resolved)) {
            Some(e) => EgressVerdict::ServiceEntry(format!("{}/{}", e.namespace, e.name)),
            None => EgressVerdict::Refused(format!(
                "outbound traffic policy REGISTRY_ONLY: {dst} is outside the mesh and no ServiceEntry lists it"
            )),
        }
    }

    /// Every host named by a ServiceEntry: what the agent resolves.
    pub fn egress_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .service_entries
            .values()
            .flat_map(|e| e.hosts.iter().cloned())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mode: OutboundMode) -> State {
        let mut s = State::default();
        s.mesh.outbound = mode;
        s.service_entries.insert(
            ("shop".into(), "payments".into()),
            ServiceEntry {
                namespace: "shop".into(),
                name: "payments".into(),
                hosts: vec!["api.payments.example".into()],
                addresses: vec!["203.0.113.0/24".into()],
                ports: vec![443],
            },
        );
        s
    }

    fn dst(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    #[test]
    fn allow_any_lets_everything_out() {
        let s = state(OutboundMode::AllowAny);
        assert_eq!(
            s.egress(dst("198.51.100.1:80"), &HashMap::new()),
            EgressVerdict::AllowAny
        );
    }

    #[test]
    fn registry_only_needs_a_listed_address_or_host_and_port() {
        let s = state(OutboundMode::RegistryOnly);
        let none = HashMap::new();
        let listed = EgressVerdict::ServiceEntry("shop/payments".into());
        assert_eq!(s.egress(dst("203.0.113.7:443"), &none), listed);
        assert!(
            matches!(s.egress(dst("203.0.113.7:80"), &none), EgressVerdict::Refused(r) if r.contains("203.0.113.7:80"))
        );
        assert!(matches!(
            s.egress(dst("198.51.100.1:443"), &none),
            EgressVerdict::Refused(_)
        ));
        let resolved = HashMap::from([(
            "api.payments.example".to_string(),
            vec!["198.51.100.1".parse().unwrap()],
        )]);
        assert_eq!(s.egress(dst("198.51.100.1:443"), &resolved), listed);
    }
}
