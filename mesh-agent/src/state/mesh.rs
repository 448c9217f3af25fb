//! MeshConfig (weft.dev/v1alpha1): settings that apply to the whole mesh. There is one, named
//! `default` in the root namespace; without it every setting has its default.

use serde::{Deserialize, Serialize};

use super::peer_auth::ROOT_NAMESPACE;

/// The only MeshConfig the agents read.
pub const MESH_CONFIG_NAME: &str = "default";
pub const MESH_CONFIG_NAMESPACE: &str = ROOT_NAMESPACE;

/// How agents carry meshed traffic between them. Both ends always serve both; this chooses what
/// the client side opens.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    /// HBONE: HTTP/2 CONNECT over mTLS on TCP (wire-compatible with Istio's ztunnel).
    #[default]
    H2,
    /// The same CONNECT semantics and identities over QUIC (UDP); falls back to h2 where UDP
    /// is blocked.
    Quic,
}

/// What enrolled pods may reach outside the mesh (Istio's `outboundTrafficPolicy.mode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Any destination; those outside the mesh are reached as plain TCP.
    #[default]
    AllowAny,
    /// Only pods and Services the cluster knows, and hosts a ServiceEntry lists.
    RegistryOnly,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshConfig {
    pub tunnel: TunnelProtocol,
    pub outbound: OutboundMode,
    /// Span export of the L7 pool; None: no spans are recorded (trace context is still
    /// propagated, so applications' own traces stay whole).
    #[serde(default)]
    pub tracing: Option<Tracing>,
}

/// Percent of new traces sampled when MeshConfig names a collector but no rate (Istio's
/// default).
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// MeshConfig `tracing`: where the L7 pool sends its spans and how many new traces it records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracing {
    pub otlp: OtlpTarget,
    /// 0..=100: the share of requests arriving without a sampling decision whose trace is
    /// recorded. A decision that comes with the request (W3C flags, B3 sampled) is kept.
    pub sampling: f64,
}

impl Tracing {
    /// Checks a percentage as MeshConfig gives it.
    pub fn check_sampling(percent: f64) -> Result<f64, String> {
        if percent.is_finite() && (0.0..=100.0).contains(&percent) {
            Ok(percent)
        } else {
            Err(format!("{percent}: a percentage from 0 to 100"))
        }
    }
}

/// The OTLP/HTTP port when an address names none (the OpenTelemetry default).
pub const OTLP_HTTP_PORT: u16 = 4318;
/// The OTLP/HTTP traces path when an address names none.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";
const OTLP_TARGET_MAX_LEN: usize = 256;

/// An OTLP/HTTP collector: written `HOST:PORT`, `HOST` (port 4318) or
/// `http://HOST[:PORT][/PATH]` (path /v1/traces unless given, then used as it is, as the
/// OpenTelemetry exporters treat a traces endpoint). HOST is an IP address or a DNS name,
/// resolved by the worker at export time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtlpTarget {
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query of the POST, starting with `/`.
    pub path: String,
}

impl OtlpTarget {
    /// The `host` request header value (brackets around an IPv6 address).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl From<std::net::SocketAddr> for OtlpTarget {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
            path: OTLP_TRACES_PATH.to_owned(),
        }
    }
}

impl std::str::FromStr for OtlpTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > OTLP_TARGET_MAX_LEN {
            return Err(format!(
                "{s:?}: expected HOST:PORT or http://HOST:PORT[/PATH] (at most {OTLP_TARGET_MAX_LEN} characters)"
            ));
        }
        let (with_scheme, text) = match s.split_once("://") {
            Some(_) => (true, s.to_owned()),
            None => (false, format!("http://{s}")),
        };
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("{s:?}: not an address or URL ({e})"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{s:?}: https is not supported; name the collector's plain OTLP/HTTP port"
                ))
            }
            other => return Err(format!("{s:?}: scheme {other:?}, expected http")),
        }
        let authority = uri.authority().ok_or_else(|| format!("{s:?}: no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{s:?}: credentials in the address are not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        if !with_scheme && uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("{s:?}: a path needs the http:// form"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("/") | Some("") => OTLP_TRACES_PATH.to_owned(),
            Some(p) => p.to_owned(),
        };
        // `Authority::port_u16` is None for a port that is not a number: check it here.
        let after_host = authority
            .as_str()
            .rsplit_once(']')
            .map_or(authority.as_str(), |x| x.1);
        let port = match after_host.rsplit_once(':') {
            None => OTLP_HTTP_PORT,
            Some((_, p)) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: port {p:?} is not a port number"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl std::fmt::Display for OtlpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

impl Serialize for OtlpTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OtlpTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_targets_parse_with_defaults_and_name_their_mistakes() {
        for (text, host, port, path) in [
            ("10.0.0.9:4318", "10.0.0.9", 4318, "/v1/traces"),
            (
                "collector.observability",
                "collector.observability",
                4318,
                "/v1/traces",
            ),
            ("http://collector:9999", "collector", 9999, "/v1/traces"),
            ("http://collector:9999/", "collector", 9999, "/v1/traces"),
            ("http://c:1/otlp/v1/traces", "c", 1, "/otlp/v1/traces"),
            ("[fd00::9]:4318", "fd00::9", 4318, "/v1/traces"),
        ] {
            let t: OtlpTarget = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (t.host.as_str(), t.port, t.path.as_str()),
                (host, port, path)
            );
            // What the state dump shows reads back the same.
            let again: OtlpTarget = t.to_string().parse().expect("round trip");
            assert_eq!(again, t);
        }
        assert_eq!(
            "[fd00::9]:4318".parse::<OtlpTarget>().unwrap().authority(),
            "[fd00::9]:4318"
        );
        for (bad, words) in [
            ("", "expected HOST:PORT"),
            ("https://collector:4318", "https is not supported"),
            ("grpc://collector:4317", "expected http"),
            ("http://user:pw@collector:4318", "credentials"),
            ("collector:4318/v1/traces", "http:// form"),
            ("collector:notaport", "not a port number"),
            ("collector:0", "not a port number"),
            ("a b:1", "not an address"),
        ] {
            let e = bad.parse::<OtlpTarget>().expect_err(bad);
            assert!(e.contains(words), "{bad}: {e}");
        }
        let long = format!("{}:4318", "a".repeat(300));
        assert!(long.parse::<OtlpTarget>().is_err());
    }

    #[test]
    fn sampling_is_a_percentage() {
        for ok in [0.0, 0.5, 1.0, 100.0] {
            assert_eq!(Tracing::check_sampling(ok), Ok(ok));
        }
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
            assert!(Tracing::check_sampling(bad).is_err(), "{bad}");
        }
    }
}
