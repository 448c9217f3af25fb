//! Gateway API ReferenceGrant (`gateway.networking.k8s.io/v1beta1`): the owner of a namespace
//! says which routes of other namespaces may send traffic to its Services.
//!
//! A route's backendRef to a Service of another namespace resolves only when a ReferenceGrant
//! in the Service's namespace lists the route (`from`: group `gateway.networking.k8s.io`, its
//! kind, its namespace) and the Service (`to`: the core group, kind `Service`, and the
//! Service's name unless the grant names none). Otherwise the backend is marked
//! `RefNotPermitted` and its share of the traffic answers 500, as for a missing backend
//! (`State::resolve_route_backends`); removing the grant takes the backend away again.
//!
//! One exception: a backendRef to a Service the route itself binds as its parent (a consumer
//! route that sends its namespace's requests on to the Service they were addressed to) needs
//! no grant: the clients of that namespace reach that Service without the route, so the route
//! opens no new way in (the mesh conformance suite's consumer route is one).

use serde::{Deserialize, Serialize};

use super::{routes::RouteKind, ServiceKey, State};

/// The Gateway API's group: what a grant's `from` names for routes.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceGrant {
    pub namespace: String,
    pub name: String,
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

/// Who may refer: objects of `group`/`kind` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

/// What they may refer to, in the grant's namespace: objects of `group`/`kind`, only `name`
/// when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

impl ReferenceGrant {
    /// Whether this grant lets routes of `kind` in namespace `from` refer to Service `to`.
    pub fn permits(&self, kind: RouteKind, from: &str, to: &ServiceKey) -> bool {
        let route = |f: &GrantFrom| {
            f.group == GATEWAY_GROUP && f.kind == kind.name() && f.namespace == from
        };
        let service = |t: &GrantTo| {
            matches!(t.group.as_str(), "" | "core")
                && t.kind == "Service"
                && t.name.as_ref().is_none_or(|n| *n == to.name)
        };
        self.namespace == to.namespace && self.from.iter().any(route) && self.to.iter().any(service)
    }
}

impl State {
    /// Whether a route of `kind` in namespace `route_ns`, bound to `parents`, may send traffic to
    /// Service `backend`. Err: why not (the message of a `RefNotPermitted` condition).
    pub fn backend_permitted(
        &self,
        kind: RouteKind,
        route_ns: &str,
        parents: &[&ServiceKey],
        backend: &ServiceKey,
    ) -> Result<(), String> {
        if backend.namespace == route_ns || parents.contains(&backend) {
            return Ok(());
        }
        let granted = self
            .reference_grants
            .values()
            .any(|g| g.permits(kind, route_ns, backend));
        if granted {
            return Ok(());
        }
        Err(format!(
            "Service {backend} is in another namespace and no ReferenceGrant in {} lets {}s of {route_ns} refer to it",
            backend.namespace,
            kind.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn grant(
        ns: &str,
        from: &[(&str, &str, &str)],
        to: &[(&str, &str, Option<&str>)],
    ) -> ReferenceGrant {
        ReferenceGrant {
            namespace: ns.into(),
            name: "g".into(),
            from: from
                .iter()
                .map(|(g, k, n)| GrantFrom {
                    group: (*g).into(),
                    kind: (*k).into(),
                    namespace: (*n).into(),
                })
                .collect(),
            to: to
                .iter()
                .map(|(g, k, n)| GrantTo {
                    group: (*g).into(),
                    kind: (*k).into(),
                    name: n.map(Into::into),
                })
                .collect(),
        }
    }

    const HTTP: (&str, &str, &str) = (GATEWAY_GROUP, "HTTPRoute", "shop");

    #[test]
    fn a_grant_permits_exactly_the_routes_and_services_it_names() {
        let billing = svc("payments", "billing");
        let any_service = grant("payments", &[HTTP], &[("", "Service", None)]);
        assert!(any_service.permits(RouteKind::Http, "shop", &billing));
        assert!(any_service.permits(RouteKind::Http, "shop", &svc("payments", "ledger")));
        // Not another namespace's routes, not another kind, not another namespace's Services.
        assert!(!any_service.permits(RouteKind::Http, "other", &billing));
        assert!(!any_service.permits(RouteKind::Grpc, "shop", &billing));
        assert!(!any_service.permits(RouteKind::Http, "shop", &svc("elsewhere", "billing")));

        let named = grant("payments", &[HTTP], &[("", "Service", Some("billing"))]);
        assert!(named.permits(RouteKind::Http, "shop", &billing));
        assert!(!named.permits(RouteKind::Http, "shop", &svc("payments", "ledger")));

        // A grant for something else: Gateways, Secrets, another API group's "HTTPRoute".
        for g in [
            grant(
                "payments",
                &[(GATEWAY_GROUP, "Gateway", "shop")],
                &[("", "Service", None)],
            ),
            grant("payments", &[HTTP], &[("", "Secret", None)]),
            grant(
                "payments",
                &[("example.com", "HTTPRoute", "shop")],
                &[("", "Service", None)],
            ),
            grant("payments", &[HTTP], &[("example.com", "Service", None)]),
        ] {
            assert!(!g.permits(RouteKind::Http, "shop", &billing), "{g:?}");
        }
        // Several entries: any `from` with any `to`.
        let both = grant(
            "payments",
            &[HTTP, (GATEWAY_GROUP, "GRPCRoute", "web")],
            &[("", "Secret", None), ("core", "Service", Some("billing"))],
        );
        assert!(both.permits(RouteKind::Grpc, "web", &billing));
        assert!(both.permits(RouteKind::Http, "shop", &billing));
        assert!(!both.permits(RouteKind::Grpc, "shop", &billing));
    }

    #[test]
    fn a_backend_in_another_namespace_needs_a_grant_unless_it_is_the_routes_parent() {
        let mut state = State::default();
        let billing = svc("payments", "billing");
        let orders = svc("shop", "orders");
        // Same namespace: always.
        assert!(state
            .backend_permitted(RouteKind::Http, "shop", &[&orders], &svc("shop", "v2"))
            .is_ok());
        let why = state
            .backend_permitted(RouteKind::Http, "shop", &[&orders], &billing)
            .unwrap_err();
        assert!(
            why.contains("payments/billing") && why.contains("ReferenceGrant"),
            "{why}"
        );
        // A consumer route (in `web`) sending its clients on to the parent it binds.
        assert!(state
            .backend_permitted(RouteKind::Http, "web", &[&orders], &orders)
            .is_ok());
        assert!(state
            .backend_permitted(RouteKind::Http, "web", &[&orders], &svc("shop", "v2"))
            .is_err());
        let g = grant("payments", &[HTTP], &[("", "Service", Some("billing"))]);
        state
            .reference_grants
            .insert(("payments".into(), "g".into()), g);
        assert!(state
            .backend_permitted(RouteKind::Http, "shop", &[&orders], &billing)
            .is_ok());
        assert!(state
            .backend_permitted(RouteKind::Grpc, "shop", &[&orders], &billing)
            .is_err());
    }
}
