//! Gateway API ReferenceGrant (gateway.networking.k8s.io/v1beta1; v1alpha2 is read too),
//! checked as the CRD's schema checks it (at least one and at most 16 `from` and `to`
//! entries, each field there) and turned into a `state::reference_grants::ReferenceGrant`.
//! Grants for anything (Gateways, Secrets, other kinds) are kept: the mesh acts only on those
//! that name routes and Services (`ReferenceGrant::permits`).

use serde::Deserialize;

use super::{
    route_parts::{at, Refusal},
    Meta,
};
use crate::state::reference_grants::{GrantFrom, GrantTo, ReferenceGrant};

/// The CRD's bound on `spec.from` and `spec.to`.
const MAX_ENTRIES: usize = 16;

#[derive(Debug, Deserialize)]
pub struct ReferenceGrantObject {
    pub metadata: Meta,
    pub spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub from: Vec<ReferenceGrantFrom>,
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

impl ReferenceGrantObject {
    pub fn into_grant(self) -> Result<ReferenceGrant, Refusal> {
        let Spec { from, to } = self.spec;
        for (field, len) in [("spec.from", from.len()), ("spec.to", to.len())] {
            if len == 0 || len > MAX_ENTRIES {
                return Err(at(
                    field,
                    format!("1 to {MAX_ENTRIES} entries, not {len}: a grant that names nothing grants nothing"),
                ));
            }
        }
        if let Some(i) = from.iter().position(|f| f.kind.is_empty()) {
            return Err(at(format!("spec.from[{i}].kind"), "empty"));
        }
        if let Some(i) = from.iter().position(|f| f.namespace.is_empty()) {
            return Err(at(format!("spec.from[{i}].namespace"), "empty"));
        }
        if let Some(i) = to.iter().position(|t| t.kind.is_empty()) {
            return Err(at(format!("spec.to[{i}].kind"), "empty"));
        }
        Ok(ReferenceGrant {
            namespace: self.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: self.metadata.name,
            from: from
                .into_iter()
                .map(|f| GrantFrom {
                    group: f.group,
                    kind: f.kind,
                    namespace: f.namespace,
                })
                .collect(),
            to: to
                .into_iter()
                .map(|t| GrantTo {
                    group: t.group,
                    kind: t.kind,
                    // The CRD allows an empty name to mean none.
                    name: t.name.filter(|n| !n.is_empty()),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::source::{objects::Object, parse::parse_document, parse::Parsed};

    fn parse(
        text: &str,
    ) -> Result<crate::state::reference_grants::ReferenceGrant, (String, String)> {
        match parse_document(yaml_serde::from_str(text).expect("test YAML"))? {
            Parsed::Object(Object::ReferenceGrant(g)) => Ok(g),
            _ => panic!("not a grant"),
        }
    }

    const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
        metadata: {name: g, namespace: payments}\n\
        spec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]\n  \
        to: [{group: '', kind: Service, name: billing}, {group: '', kind: Secret, name: ''}]\n";

    #[test]
    fn grants_parse_in_both_served_versions_and_mistakes_name_their_field() {
        let g = parse(GRANT).unwrap();
        assert_eq!((g.namespace.as_str(), g.name.as_str()), ("payments", "g"));
        assert_eq!(g.from[0].namespace, "shop");
        assert_eq!(g.to[0].name.as_deref(), Some("billing"));
        assert_eq!(g.to[1].name, None, "an empty name is none");
        assert_eq!(parse(&GRANT.replace("v1beta1", "v1alpha2")).unwrap(), g);
        for (change, field, words) in [
            (
                ("to: [{group: '', kind: Service, name: billing}, {group: '', kind: Secret, name: ''}]", "to: []"),
                "spec.to",
                "1 to 16",
            ),
            (
                ("namespace: shop", "namespace: ''"),
                "spec.from[0].namespace",
                "empty",
            ),
            (("kind: HTTPRoute, ", ""), "spec.from[0]", "kind"),
            (
                ("name: billing", "nmae: billing"),
                "spec.to[0].nmae",
                "unknown field",
            ),
        ] {
            let text = GRANT.replace(change.0, change.1);
            let (f, msg) = parse(&text).expect_err(&text);
            assert_eq!(f, field, "{text}: {msg}");
            assert!(msg.contains(words), "{text}: {msg}");
        }
    }
}
