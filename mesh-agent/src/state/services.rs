//! Services and their endpoints: what a connect to a cluster IP resolves to.
//!
//! Endpoints come from the EndpointSlices of the Service (label `kubernetes.io/service-name`),
//! as kube-proxy does; where a Service has none (file mode often has none), they are derived from
//! its selector: the ready pods of its namespace with matching labels and an IP. A named
//! `targetPort` is looked up in each pod's container ports.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::{Pod, State};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    /// `appProtocol`: says whether the port speaks HTTP (see `state::l7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for headless Services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; None: endpoints are managed by hand (EndpointSlices only).
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    pub service: Option<String>,
    pub endpoints: Vec<SliceEndpoint>,
    /// Port name (empty for an unnamed port) → port number.
    pub ports: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; absent counts as ready, as Kubernetes says.
    pub ready: bool,
}

/// Where a connect to a Service's cluster IP and port may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub service: ServiceKey,
    pub port: u16,
    /// Ready endpoints, in a stable order (the balancer picks among them).
    pub endpoints: Vec<SocketAddr>,
}

impl State {
    /// The Service port at `dst`, if `dst` is a cluster IP and port, with its ready endpoints.
    pub fn resolve_service(&self, dst: SocketAddr) -> Option<Resolved> {
        let key = self.by_vip.get(&(dst.ip(), dst.port()))?;
        let service = self.services.get(key)?;
        let port = service.ports.iter().find(|p| p.port == dst.port())?;
        let endpoints = self.service_endpoints(service, port);
        Some(Resolved {
            service: key.clone(),
            port: dst.port(),
            endpoints,
        })
    }

    /// The Service that has `endpoint` (a pod IP and port) among its endpoints, if any: the
    /// destination an inbound connection was most likely sent to. Only the endpoint's namespace
    /// is searched (a Service selects pods of its own namespace).
    pub fn service_of_endpoint(&self, endpoint: SocketAddr) -> Option<ServiceKey> {
        self.service_port_of_endpoint(endpoint)
            .map(|(s, _)| s.key.clone())
    }

    /// `service_of_endpoint`, with the Service port whose target `endpoint` is.
    pub fn service_port_of_endpoint(
        &self,
        endpoint: SocketAddr,
    ) -> Option<(&Service, &ServicePort)> {
        let pod = self.pod_by_ip(endpoint.ip())?;
        let ns = &pod.key.namespace;
        let selects =
            |sel: &BTreeMap<String, String>| sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v));
        let targets = |p: &&ServicePort| match &p.target_port {
            TargetPort::Number(n) => *n == endpoint.port(),
            TargetPort::Name(name) => pod.ports.get(name) == Some(&endpoint.port()),
        };
        self.services
            .range(
                ServiceKey {
                    namespace: ns.clone(),
                    name: String::new(),
                }..,
            )
            .take_while(|(k, _)| &k.namespace == ns)
            .find_map(|(_, s)| {
                let port = match &s.selector {
                    // The common case, without building endpoint lists: the selector and the port.
                    Some(sel) if !sel.is_empty() => {
                        selects(sel).then(|| s.ports.iter().find(targets)).flatten()
                    }
                    // Endpoints managed by hand: only the EndpointSlices say.
                    _ => s
                        .ports
                        .iter()
                        .find(|p| self.service_endpoints(s, p).contains(&endpoint)),
                };
                Some((s, port?))
            })
    }

    fn service_endpoints(&self, service: &Service, port: &ServicePort) -> Vec<SocketAddr> {
        let slices: Vec<&EndpointSlice> = self
            .endpoint_slices
            .values()
            .filter(|s| {
                s.namespace == service.key.namespace
                    && s.service.as_deref() == Some(&service.key.name)
            })
            .collect();
        let mut out: Vec<SocketAddr> = if slices.is_empty() {
            self.selected_pods(service)
                .filter_map(|pod| {
                    let target = match &port.target_port {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => *pod.ports.get(name)?,
                    };
                    Some(SocketAddr::new(pod.ip?, target))
                })
                .collect()
        } else {
            let name = port.name.clone().unwrap_or_default();
            slices
                .iter()
                .flat_map(|s| {
                    let number = s.ports.get(&name).copied();
                    s.endpoints.iter().filter(|e| e.ready).flat_map(move |e| {
                        e.addresses
                            .iter()
                            .filter_map(move |ip| Some(SocketAddr::new(*ip, number?)))
                    })
                })
                .collect()
        };
        out.sort();
        out.dedup();
        out
    }

    fn selected_pods<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
        let selector = service.selector.as_ref().filter(|s| !s.is_empty());
        self.pods.values().filter(move |p| {
            p.key.namespace == service.key.namespace
                && selector.is_some_and(|sel| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodKey;

    fn pod(name: &str, ip: &str, app: &str) -> Pod {
        Pod {
            key: PodKey {
                namespace: "shop".into(),
                name: name.into(),
            },
            uid: None,
            node: Some("n1".into()),
            service_account: "default".into(),
            ip: Some(ip.parse().unwrap()),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: [("http".to_string(), 8080)].into(),
            netns: None,
            cgroup: None,
        }
    }

    fn state(target_port: TargetPort) -> State {
        let mut s = State::default();
        for p in [
            pod("a", "10.1.0.2", "web"),
            pod("b", "10.2.0.2", "web"),
            pod("c", "10.2.0.3", "db"),
        ] {
            s.pods.insert(p.key.clone(), p);
        }
        let key = ServiceKey {
            namespace: "shop".into(),
            name: "web".into(),
        };
        s.services.insert(
            key.clone(),
            Service {
                key,
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port,
                    app_protocol: None,
                }],
                selector: Some([("app".to_string(), "web".to_string())].into()),
                labels: Default::default(),
            },
        );
        s.reindex();
        s
    }

    fn addrs(v: &[&str]) -> Vec<SocketAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_cluster_ip_resolves_to_the_selected_pods() {
        let s = state(TargetPort::Number(8080));
        let r = s.resolve_service("10.96.0.10:80".parse().unwrap()).unwrap();
        assert_eq!(r.service.to_string(), "shop/web");
        assert_eq!(r.endpoints, addrs(&["10.1.0.2:8080", "10.2.0.2:8080"]));
        assert!(s
            .resolve_service("10.96.0.10:81".parse().unwrap())
            .is_none());
        assert!(s
            .resolve_service("10.1.0.2:8080".parse().unwrap())
            .is_none());
        let named = state(TargetPort::Name("http".into()));
        let r = named
            .resolve_service("10.96.0.10:80".parse().unwrap())
            .unwrap();
        assert_eq!(r.endpoints, addrs(&["10.1.0.2:8080", "10.2.0.2:8080"]));
    }

    #[test]
    fn an_endpoint_names_its_service() {
        let s = state(TargetPort::Number(8080));
        let web = s.service_of_endpoint("10.2.0.2:8080".parse().unwrap());
        assert_eq!(web.map(|k| k.to_string()).as_deref(), Some("shop/web"));
        assert_eq!(
            s.service_of_endpoint("10.2.0.2:9090".parse().unwrap()),
            None
        );
        assert_eq!(
            s.service_of_endpoint("10.2.0.3:8080".parse().unwrap()),
            None
        );
    }

    #[test]
    fn the_state_serialises_for_config_dump() {
        let v = serde_json::to_value(state(TargetPort::Number(8080))).expect("JSON");
        assert_eq!(v["pods"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["services"][0]["cluster_ips"][0], "10.96.0.10");
    }

    #[test]
    fn endpoint_slices_win_over_the_selector_and_unready_endpoints_are_left_out() {
        let mut s = state(TargetPort::Number(8080));
        s.endpoint_slices.insert(
            ("shop".into(), "web-abc".into()),
            EndpointSlice {
                namespace: "shop".into(),
                name: "web-abc".into(),
                service: Some("web".into()),
                endpoints: vec![
                    SliceEndpoint {
                        addresses: vec!["10.2.0.9".parse().unwrap()],
                        ready: true,
                    },
                    SliceEndpoint {
                        addresses: vec!["10.2.0.8".parse().unwrap()],
                        ready: false,
                    },
                ],
                ports: [("http".to_string(), 9090)].into(),
            },
        );
        let r = s.resolve_service("10.96.0.10:80".parse().unwrap()).unwrap();
        assert_eq!(r.endpoints, addrs(&["10.2.0.9:9090"]));
    }
}
