//! Service (v1) and EndpointSlice (discovery.k8s.io/v1) shapes, and their conversion. Unknown
//! fields are accepted, as for the other Kubernetes kinds; wrong types are errors naming the
//! field.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Deserialize;

use super::Meta;
use crate::state::services::{
    EndpointSlice, Service, ServiceKey, ServicePort, SliceEndpoint, TargetPort, SERVICE_NAME_LABEL,
};

#[derive(Debug, Deserialize)]
pub struct ServiceObject {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// "None" for headless Services.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    pub selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    String(String),
}

#[derive(Debug, Deserialize)]
pub struct EndpointSliceObject {
    pub metadata: Meta,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub ports: Vec<EndpointPortSpec>,
}

#[derive(Debug, Deserialize)]
pub struct EndpointSpec {
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub conditions: Conditions,
}

#[derive(Debug, Default, Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct EndpointPortSpec {
    pub name: Option<String>,
    pub port: Option<u16>,
}

impl ServiceObject {
    /// Checks what serde cannot: cluster IPs are addresses (or "None"), named target ports
    /// are valid names, only TCP ports are served.
    pub fn check(&self) -> Result<(), (String, String)> {
        let ips = self.spec.cluster_ip.iter().chain(&self.spec.cluster_ips);
        for (i, ip) in ips.enumerate() {
            if ip != "None" && !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
                let field = if i == 0 && self.spec.cluster_ip.is_some() {
                    "spec.clusterIP".to_owned()
                } else {
                    "spec.clusterIPs".to_owned()
                };
                return Err((field, format!("{ip:?} is not an IP address (or \"None\")")));
            }
        }
        for (i, p) in self.spec.ports.iter().enumerate() {
            if let Some(IntOrString::String(s)) = &p.target_port {
                if s.is_empty() || s.parse::<u32>().is_ok() {
                    return Err((
                        format!("spec.ports[{i}].targetPort"),
                        format!("{s:?} is neither a port number nor a port name"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn into_service(self) -> Service {
        let ServiceObject { metadata, spec } = self;
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ip
            .iter()
            .chain(&spec.cluster_ips)
            .filter_map(|ip| ip.parse().ok())
            .collect();
        cluster_ips.dedup();
        let ports = spec
            .ports
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| ServicePort {
                target_port: match p.target_port {
                    None => TargetPort::Number(p.port),
                    Some(IntOrString::Int(n)) => TargetPort::Number(n),
                    Some(IntOrString::String(s)) => TargetPort::Name(s),
                },
                name: p.name,
                port: p.port,
                app_protocol: p.app_protocol,
            })
            .collect();
        Service {
            key: ServiceKey {
                namespace: metadata.namespace.unwrap_or_else(|| "default".into()),
                name: metadata.name,
            },
            cluster_ips,
            ports,
            selector: spec.selector,
            labels: metadata.labels,
        }
    }
}

impl EndpointSliceObject {
    pub fn into_slice(self) -> EndpointSlice {
        let EndpointSliceObject {
            metadata,
            endpoints,
            ports,
        } = self;
        EndpointSlice {
            namespace: metadata.namespace.unwrap_or_else(|| "default".into()),
            service: metadata.labels.get(SERVICE_NAME_LABEL).cloned(),
            name: metadata.name,
            endpoints: endpoints
                .into_iter()
                .map(|e| SliceEndpoint {
                    addresses: e.addresses,
                    ready: e.conditions.ready.unwrap_or(true),
                })
                .collect(),
            ports: ports
                .into_iter()
                .filter_map(|p| Some((p.name.unwrap_or_default(), p.port?)))
                .collect(),
        }
    }
}
