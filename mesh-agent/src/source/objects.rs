//! Kubernetes object shapes the file source understands, and their conversion into `State`.
//! Unknown fields are accepted (real objects carry many); wrong types and missing required
//! fields are errors that name the field.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Deserialize;

pub mod grpc_route;
pub mod http_route;
pub mod reference_grant;
pub mod route_parts;
pub mod services;

pub use services::{EndpointSliceObject, ServiceObject};

use crate::{
    config::{CGROUP_ANNOTATION, NETNS_ANNOTATION},
    crd,
    state::{
        mesh::{DEFAULT_SAMPLING_PERCENT, MESH_CONFIG_NAME, MESH_CONFIG_NAMESPACE},
        MeshConfig, Namespace, Node, PeerAuthentication, Pod, PodKey, ServiceEntry, State, Tracing,
    },
};

#[derive(Debug, Deserialize)]
pub struct Meta {
    pub name: String,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 (the API server's); routes use it for the spec's precedence tie-break.
    #[serde(rename = "creationTimestamp")]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PodObject {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
pub struct NodeObject {
    pub metadata: Meta,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Default, Deserialize)]
pub struct NodeStatus {
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
}

#[derive(Debug, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

#[derive(Debug, Deserialize)]
pub struct NamespaceObject {
    pub metadata: Meta,
}

/// What the schema cannot say of an AuthorizationPolicy: ipBlocks are addresses or CIDRs, ports
/// are port numbers, paths / hosts / methods have a form Istio gives a meaning, `when` keys are
/// ones the agent evaluates (`policy::l7::check`).
pub fn check_authorization_policy(ap: &crd::AuthorizationPolicy) -> Result<(), (String, String)> {
    let cidr = |b: &str| crate::policy::matching::parse_block(b).is_some();
    for (r, rule) in ap.spec.rules.iter().enumerate() {
        for (f, from) in rule.from.iter().enumerate() {
            for (field, blocks) in [
                ("ipBlocks", &from.source.ip_blocks),
                ("notIpBlocks", &from.source.not_ip_blocks),
            ] {
                if let Some((i, b)) = blocks.iter().enumerate().find(|(_, b)| !cidr(b)) {
                    return Err((
                        format!("spec.rules[{r}].from[{f}].source.{field}[{i}]"),
                        format!("{b:?} is not an IP address or CIDR"),
                    ));
                }
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            for (field, ports) in [
                ("ports", &to.operation.ports),
                ("notPorts", &to.operation.not_ports),
            ] {
                if let Some((i, p)) = ports
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.parse::<u16>().map_or(true, |n| n == 0))
                {
                    return Err((
                        format!("spec.rules[{r}].to[{t}].operation.{field}[{i}]"),
                        format!("{p:?} is not a port number"),
                    ));
                }
            }
            crate::policy::l7::check::operation(&to.operation)
                .map_err(|(f, m)| (format!("spec.rules[{r}].to[{t}].operation.{f}"), m))?;
        }
        for (w, c) in rule.when.iter().enumerate() {
            crate::policy::l7::check::condition(c)
                .map_err(|(f, m)| (format!("spec.rules[{r}].when[{w}]{f}"), m))?;
        }
    }
    Ok(())
}

/// A ServiceEntry names what it lets out: at least one host or address, valid addresses and
/// CIDRs, TCP ports.
pub fn check_service_entry(se: &crd::ServiceEntry) -> Result<(), (String, String)> {
    let spec = &se.spec;
    if spec.hosts.is_empty() && spec.addresses.is_empty() {
        return Err((
            "spec.hosts".into(),
            "a ServiceEntry needs hosts or addresses: it would let nothing out".into(),
        ));
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let valid = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            let why = if h.contains('*') {
                format!("{h:?}: wildcard hosts are not supported (the agent resolves each name); list the names")
            } else {
                format!("{h:?} is not a DNS name")
            };
            return Err((format!("spec.hosts[{i}]"), why));
        }
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        if crate::policy::matching::parse_block(a).is_none() {
            return Err((
                format!("spec.addresses[{i}]"),
                format!("{a:?} is not an IP address or CIDR"),
            ));
        }
    }
    if spec.ports.is_empty() {
        return Err(("spec.ports".into(), "list at least one port".into()));
    }
    for (i, p) in spec.ports.iter().enumerate() {
        if p.number == 0 {
            return Err((format!("spec.ports[{i}].number"), "0 is not a port".into()));
        }
        if let Some(proto) = p.protocol.as_deref() {
            if !matches!(
                proto.to_ascii_uppercase().as_str(),
                "TCP" | "HTTP" | "HTTPS" | "TLS" | "HTTP2" | "GRPC"
            ) {
                return Err((
                    format!("spec.ports[{i}].protocol"),
                    format!("{proto:?}: only TCP-based protocols are carried"),
                ));
            }
        }
    }
    Ok(())
}

/// The name and namespace of the MeshConfig are part of the contract: a second MeshConfig would
/// be ambiguous.
pub fn check_mesh_config(mc: &crd::MeshConfig) -> Result<(), (String, String)> {
    let name = mc.metadata.name.as_deref().unwrap_or_default();
    let ns = mc.metadata.namespace.as_deref().unwrap_or("default");
    if name != MESH_CONFIG_NAME || ns != MESH_CONFIG_NAMESPACE {
        return Err((
            "metadata.name".into(),
            format!(
                "the MeshConfig must be {MESH_CONFIG_NAMESPACE}/{MESH_CONFIG_NAME}; \
                 {ns}/{name} would be ignored"
            ),
        ));
    }
    mesh_tracing(mc)?;
    Ok(())
}

/// MeshConfig `tracing` as the state holds it; a bad address or rate names its field.
pub fn mesh_tracing(mc: &crd::MeshConfig) -> Result<Option<Tracing>, (String, String)> {
    let Some(t) = &mc.spec.tracing else {
        return Ok(None);
    };
    let otlp = t
        .otlp
        .parse()
        .map_err(|e| ("spec.tracing.otlp".to_string(), e))?;
    let sampling = Tracing::check_sampling(t.sampling.unwrap_or(DEFAULT_SAMPLING_PERCENT))
        .map_err(|e| ("spec.tracing.sampling".to_string(), e))?;
    Ok(Some(Tracing { otlp, sampling }))
}

/// One parsed document.
pub enum Object {
    Node(NodeObject),
    Namespace(NamespaceObject),
    Pod(PodObject),
    PeerAuthentication(crd::PeerAuthentication),
    AuthorizationPolicy(crd::AuthorizationPolicy),
    MeshConfig(crd::MeshConfig),
    ServiceEntry(crd::ServiceEntry),
    Service(ServiceObject),
    EndpointSlice(EndpointSliceObject),
    /// An HTTPRoute or GRPCRoute bound to a Service (GAMMA), checked and compiled.
    Route(crate::state::routes::Route),
    ReferenceGrant(crate::state::reference_grants::ReferenceGrant),
}

impl Object {
    pub fn apply(self, state: &mut State) {
        match self {
            Object::Node(n) => {
                let internal_ip = n
                    .status
                    .addresses
                    .iter()
                    .find(|a| a.kind == "InternalIP")
                    .and_then(|a| a.address.parse().ok());
                let name = n.metadata.name;
                state.nodes.insert(name.clone(), Node { name, internal_ip });
            }
            Object::Namespace(ns) => {
                let name = ns.metadata.name;
                let labels = ns.metadata.labels;
                state
                    .namespaces
                    .insert(name.clone(), Namespace { name, labels });
            }
            Object::Pod(p) => {
                let pod = pod(p);
                state.pods.insert(pod.key.clone(), pod);
            }
            Object::PeerAuthentication(pa) => {
                let namespace = pa.metadata.namespace.unwrap_or_else(|| "default".into());
                let name = pa.metadata.name.unwrap_or_default();
                let policy = PeerAuthentication {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    selector: pa.spec.selector.map(|s| s.match_labels),
                    mode: pa.spec.mtls.map(|m| m.mode).unwrap_or_default(),
                };
                state.peer_authentications.insert((namespace, name), policy);
            }
            Object::AuthorizationPolicy(ap) => {
                let namespace = ap.metadata.namespace.unwrap_or_else(|| "default".into());
                let name = ap.metadata.name.unwrap_or_default();
                state.authorization_policies.insert(
                    (namespace.clone(), name.clone()),
                    crate::policy::AuthorizationPolicy {
                        namespace,
                        name,
                        spec: ap.spec,
                    },
                );
            }
            Object::Service(s) => {
                let service = s.into_service();
                state.services.insert(service.key.clone(), service);
            }
            Object::EndpointSlice(e) => {
                let slice = e.into_slice();
                state
                    .endpoint_slices
                    .insert((slice.namespace.clone(), slice.name.clone()), slice);
            }
            Object::MeshConfig(mc) => {
                state.mesh = MeshConfig {
                    // Checked when parsed (check_mesh_config), so a bad one never gets here.
                    tracing: mesh_tracing(&mc).ok().flatten(),
                    tunnel: mc.spec.tunnel,
                    outbound: mc.spec.outbound_traffic_policy.mode,
                }
            }
            Object::Route(route) => {
                state.routes.insert(route.key(), route);
            }
            Object::ReferenceGrant(g) => {
                state
                    .reference_grants
                    .insert((g.namespace.clone(), g.name.clone()), g);
            }
            Object::ServiceEntry(se) => {
                let entry = ServiceEntry::from_crd(se);
                state
                    .service_entries
                    .insert((entry.namespace.clone(), entry.name.clone()), entry);
            }
        }
    }
}

fn pod(p: PodObject) -> Pod {
    let PodObject {
        metadata: m,
        spec,
        status,
    } = p;
    let path = |key: &str| m.annotations.get(key).map(PathBuf::from);
    Pod {
        key: PodKey {
            namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
            name: m.name.clone(),
        },
        uid: m.uid.clone(),
        node: spec.node_name,
        service_account: spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        ip: status.pod_ip,
        ports: spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect(),
        netns: path(NETNS_ANNOTATION),
        cgroup: path(CGROUP_ANNOTATION),
        labels: m.labels,
    }
}
