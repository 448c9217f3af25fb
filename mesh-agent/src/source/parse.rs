//! One document (a file's YAML document, or an object from the API server) to an `Object`:
//! the single parser both sources share, so both accept and reject exactly the same things.

use serde::de::DeserializeOwned;

use super::objects::{
    check_authorization_policy, check_mesh_config, check_service_entry,
    grpc_route::GrpcRouteObject, http_route::HttpRouteObject,
    reference_grant::ReferenceGrantObject, route_parts::binds_a_service, EndpointSliceObject,
    NamespaceObject, NodeObject, Object, PodObject, ServiceObject,
};
use crate::crd::{self, API_VERSION};

const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
const GATEWAY_V1ALPHA2: &str = "gateway.networking.k8s.io/v1alpha2";
const GATEWAY_ROUTE: &str =
    "routes with only Gateway parentRefs are the gateway's, not the mesh agent's";

/// What a document is to the agent. (Short-lived, one per document: not worth boxing.)
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// An empty document (`---` with nothing after it).
    Empty,
    Object(Object),
    /// Valid, but nothing this agent acts on: said once per kind, with the reason.
    Ignored(&'static str),
}

/// Parses one document. A rejected one gives (field path, message).
pub fn parse_document(value: yaml_serde::Value) -> Result<Parsed, (String, String)> {
    if value.is_null() {
        return Ok(Parsed::Empty);
    }
    let Some(map) = value.as_mapping() else {
        return Err((
            String::new(),
            "expected a Kubernetes object (a mapping)".into(),
        ));
    };
    let text = |key: &str| map.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = text("kind").ok_or(("kind".to_string(), "missing field `kind`".to_string()))?;
    let api_version = text("apiVersion").ok_or((
        "apiVersion".to_string(),
        "missing field `apiVersion`".to_string(),
    ))?;
    Ok(Parsed::Object(
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Node") => Object::Node(typed::<NodeObject>(value)?),
            ("v1", "Namespace") => Object::Namespace(typed::<NamespaceObject>(value)?),
            ("v1", "Pod") => Object::Pod(typed::<PodObject>(value)?),
            ("v1", "Service") => {
                let s = typed::<ServiceObject>(value)?;
                s.check()?;
                Object::Service(s)
            }
            (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") if !binds_a_service(&value) => {
                return Ok(Parsed::Ignored(GATEWAY_ROUTE))
            }
            (GATEWAY_V1 | GATEWAY_V1ALPHA2, "GRPCRoute") if !binds_a_service(&value) => {
                return Ok(Parsed::Ignored(GATEWAY_ROUTE))
            }
            (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => {
                match typed::<HttpRouteObject>(value)?.into_route()? {
                    Some(route) => Object::Route(route),
                    None => return Ok(Parsed::Ignored(GATEWAY_ROUTE)),
                }
            }
            (GATEWAY_V1 | GATEWAY_V1ALPHA2, "GRPCRoute") => {
                match typed::<GrpcRouteObject>(value)?.into_route()? {
                    Some(route) => Object::Route(route),
                    None => return Ok(Parsed::Ignored(GATEWAY_ROUTE)),
                }
            }
            (GATEWAY_V1 | GATEWAY_V1BETA1 | GATEWAY_V1ALPHA2, "ReferenceGrant") => {
                Object::ReferenceGrant(typed::<ReferenceGrantObject>(value)?.into_grant()?)
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                Object::EndpointSlice(typed::<EndpointSliceObject>(value)?)
            }
            (API_VERSION, "PeerAuthentication") => {
                Object::PeerAuthentication(typed::<crd::PeerAuthentication>(value)?)
            }
            (API_VERSION, "MeshConfig") => {
                let mc = typed::<crd::MeshConfig>(value)?;
                check_mesh_config(&mc)?;
                Object::MeshConfig(mc)
            }
            (API_VERSION, "AuthorizationPolicy") => {
                let ap = typed::<crd::AuthorizationPolicy>(value)?;
                check_authorization_policy(&ap)?;
                Object::AuthorizationPolicy(ap)
            }
            (API_VERSION, "ServiceEntry") => {
                let se = typed::<crd::ServiceEntry>(value)?;
                check_service_entry(&se)?;
                Object::ServiceEntry(se)
            }
            // Known kinds whose enforcement is not built yet: refused, never silently ignored (a
            // policy that looks applied but is not would be worse than an error).
            (API_VERSION, kind @ "TrafficPolicy") => {
                typed::<crd::TrafficPolicy>(value).map(drop)?;
                return Err((
                "kind".into(),
                format!("{kind} is valid but not enforced by this agent version; refusing it rather than ignoring it"),
            ));
            }
            (API_VERSION, other) => {
                return Err((
                    "kind".into(),
                    format!("unknown {API_VERSION} kind {other:?}"),
                ));
            }
            _ => return Ok(Parsed::Ignored("Weft does not use this kind")),
        },
    ))
}

fn typed<T: DeserializeOwned>(value: yaml_serde::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{State, Tracing};

    fn mesh_config(spec: &str) -> Result<Parsed, (String, String)> {
        let text = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\n\
             metadata: {{name: default, namespace: weft-system}}\nspec: {spec}\n"
        );
        parse_document(yaml_serde::from_str(&text).expect("yaml"))
    }

    fn applied(spec: &str) -> State {
        let mut state = State::default();
        match mesh_config(spec) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
            Ok(_) => panic!("{spec}: not an object"),
            Err(e) => panic!("{spec}: {e:?}"),
        }
        state
    }

    #[test]
    fn mesh_config_tracing_becomes_state() {
        assert_eq!(applied("{tunnel: h2}").mesh.tracing, None);
        let t = applied("{tracing: {otlp: '10.0.0.9:4318', sampling: 100}}")
            .mesh
            .tracing
            .expect("tracing");
        assert_eq!(t.otlp.to_string(), "http://10.0.0.9:4318/v1/traces");
        assert_eq!(t.sampling, 100.0);
        let t: Tracing = applied("{tracing: {otlp: 'http://collector.obs:9411/api/traces'}}")
            .mesh
            .tracing
            .expect("tracing");
        assert_eq!(
            (t.otlp.host.as_str(), t.otlp.port, t.otlp.path.as_str()),
            ("collector.obs", 9411, "/api/traces")
        );
        assert_eq!(t.sampling, crate::state::mesh::DEFAULT_SAMPLING_PERCENT);
        // The state a worker receives as JSON reads back equal.
        let state = applied("{tracing: {otlp: 'collector:4318', sampling: 0.5}}");
        let json = serde_json::to_string(&state.mesh).expect("json");
        let back: crate::state::MeshConfig = serde_json::from_str(&json).expect("back");
        assert_eq!(back, state.mesh);
    }

    #[test]
    fn mesh_config_tracing_mistakes_name_their_field() {
        for (spec, field, words) in [
            (
                "{tracing: {otlp: 'https://c:4318'}}",
                "spec.tracing.otlp",
                "https",
            ),
            ("{tracing: {otlp: ''}}", "spec.tracing.otlp", "HOST:PORT"),
            (
                "{tracing: {otlp: 'c:4318', sampling: 101}}",
                "spec.tracing.sampling",
                "0 to 100",
            ),
            (
                "{tracing: {otlp: 'c:4318', sampling: -1}}",
                "spec.tracing.sampling",
                "0 to 100",
            ),
            (
                "{tracing: {otlp: 'c:4318', sampling: lots}}",
                "spec.tracing.sampling",
                "f64",
            ),
            (
                "{tracing: {otlp: 'c:4318', rate: 5}}",
                "spec.tracing.rate",
                "unknown field",
            ),
            ("{tracing: {sampling: 5}}", "spec.tracing", "otlp"),
        ] {
            let (f, msg) = mesh_config(spec)
                .err()
                .unwrap_or_else(|| panic!("{spec} accepted"));
            assert_eq!(f, field, "{spec}: {msg}");
            assert!(msg.contains(words), "{spec}: {msg}");
        }
    }
}
