//! Gateway API HTTPRoute (gateway.networking.k8s.io/v1). Routes attached to a Service (GAMMA,
//! `parentRefs[].kind: Service`) are the mesh's; routes attached to Gateways are not and are
//! left alone. L7 routing is not built yet, so a mesh route is checked and then refused with
//! that reason: a canary split that looks applied but is not would mislead.

use serde::Deserialize;

use super::Meta;

#[derive(Debug, Deserialize)]
pub struct HttpRouteObject {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
pub struct ParentRef {
    pub group: Option<String>,
    /// Gateway when absent.
    pub kind: Option<String>,
    pub name: String,
    pub port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Deserialize)]
pub struct BackendRef {
    pub name: String,
    pub port: Option<u16>,
    pub weight: Option<u32>,
}

impl HttpRouteObject {
    /// The Services this route attaches to (empty: a Gateway's route, not the mesh's).
    pub fn mesh_parents(&self) -> Vec<String> {
        self.spec
            .parent_refs
            .iter()
            .filter(|p| {
                p.kind.as_deref() == Some("Service") && p.group.as_deref().unwrap_or("").is_empty()
            })
            .map(|p| p.name.clone())
            .collect()
    }

    /// Ok(()) for a route that is not the mesh's; the reason to refuse a mesh route.
    pub fn check(&self) -> Result<(), (String, String)> {
        let parents = self.mesh_parents();
        if parents.is_empty() {
            return Ok(());
        }
        for (i, rule) in self.spec.rules.iter().enumerate() {
            if rule.backend_refs.iter().all(|b| b.weight == Some(0))
                && !rule.backend_refs.is_empty()
            {
                return Err((
                    format!("spec.rules[{i}].backendRefs"),
                    "every backend has weight 0: nothing could receive traffic".into(),
                ));
            }
        }
        Err((
            "spec.parentRefs".into(),
            format!(
                "HTTPRoute for Service {} is valid but not applied: this agent version has no L7 \
                 routing yet; refusing it rather than ignoring it",
                parents.join(", ")
            ),
        ))
    }
}
