//! Which traffic the L7 pool handles, as far as the state alone says (DESIGN.md data path 6):
//! the protocol a Service port speaks and whether a Service or namespace asks for L7.
//! Routes (`l7::route::has_routes`) and L7 authorization (`policy::l7::has_l7_rules`) are the
//! other two reasons; the plan weighs all three.

use serde::{Deserialize, Serialize};

use super::{services::ServicePort, Service, State};
use crate::config::{L7_ENABLED, L7_LABEL};

/// How to speak HTTP on a connection, from the Service port's `appProtocol` or its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `http`: HTTP/1.1, or HTTP/2 with prior knowledge when the client opens with the preface.
    Http,
    /// `http2`, `h2c`, `kubernetes.io/h2c`: HTTP/2 with prior knowledge.
    Http2,
    /// `grpc`: HTTP/2, with gRPC status reported.
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

impl ServicePort {
    /// The HTTP flavour this port speaks: `appProtocol` first (Kubernetes' field), else
    /// Istio's port-name prefixes (`http-`, `http2-`, `grpc-`, or the bare name). None: not
    /// known to be HTTP, so it stays L4.
    pub fn http_protocol(&self) -> Option<Protocol> {
        if let Some(app) = &self.app_protocol {
            return match app.to_ascii_lowercase().as_str() {
                "http" | "http1" | "http/1.1" => Some(Protocol::Http),
                "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
                "grpc" | "grpc-web" => Some(Protocol::Grpc),
                _ => None,
            };
        }
        let name = self.name.as_deref()?.to_ascii_lowercase();
        let prefix = name.split('-').next().unwrap_or_default();
        match prefix {
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }
}

impl State {
    /// Whether `service` or its namespace carries `weft.dev/l7: enabled` (golden signals
    /// without routes). The Service's own label wins over its namespace's.
    pub fn l7_labelled(&self, service: &Service) -> bool {
        if let Some(v) = service.labels.get(L7_LABEL) {
            return v == L7_ENABLED;
        }
        self.namespaces
            .get(&service.key.namespace)
            .and_then(|ns| ns.labels.get(L7_LABEL))
            .is_some_and(|v| v == L7_ENABLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::services::TargetPort;

    fn port(name: Option<&str>, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(Into::into),
            port: 80,
            target_port: TargetPort::Number(8080),
            app_protocol: app.map(Into::into),
        }
    }

    #[test]
    fn the_protocol_comes_from_app_protocol_then_istio_port_names() {
        let cases = [
            (None, Some("http"), Some(Protocol::Http)),
            (None, Some("kubernetes.io/h2c"), Some(Protocol::Http2)),
            (None, Some("h2c"), Some(Protocol::Http2)),
            (None, Some("grpc"), Some(Protocol::Grpc)),
            // appProtocol wins over the name.
            (Some("http-web"), Some("tcp"), None),
            (Some("http-web"), None, Some(Protocol::Http)),
            (Some("http"), None, Some(Protocol::Http)),
            (Some("http2-api"), None, Some(Protocol::Http2)),
            (Some("grpc-orders"), None, Some(Protocol::Grpc)),
            (Some("https"), None, None),
            (Some("web"), None, None),
            (None, None, None),
        ];
        for (name, app, want) in cases {
            assert_eq!(port(name, app).http_protocol(), want, "{name:?} {app:?}");
        }
    }
}
