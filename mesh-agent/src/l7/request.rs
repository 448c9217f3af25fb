//! The request a worker sends upstream, made from the one it received: hop-by-hop headers
//! removed (RFC 9110 §7.6.1), the URI in the form the upstream's HTTP version wants, the
//! authority kept (Host for HTTP/1.1, :authority for HTTP/2).

use http::{header, HeaderMap, HeaderName, Uri, Version as HttpVersion};

use super::upstream::{Body, Version};

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

/// Whether the request asks to switch protocols (WebSocket): HTTP/1.1 with `Upgrade`.
pub fn is_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == HttpVersion::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes the hop-by-hop headers, and those the `Connection` header names. `upgrade` keeps
/// `Connection: upgrade` and `Upgrade` (they are the point of the request).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    let kept_upgrade = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
    headers.remove(HeaderName::from_static("proxy-connection"));
    // TE is hop-by-hop; only "trailers" may cross (gRPC needs it over HTTP/2).
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
    if let Some(u) = kept_upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
    }
}

/// A copy of a request's head for one try (`Parts` is not `Clone`: its extensions may not
/// be); the extensions stay behind.
pub fn copy_parts(p: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.version = p.version;
    parts.headers = p.headers.clone();
    parts
}

/// The upstream request for `parts` (already filtered by the route) in `version`, with
/// `authority` (the client's, or a URLRewrite's hostname).
pub fn build(
    mut parts: http::request::Parts,
    body: Body,
    version: Version,
    authority: &str,
    upgrade: bool,
) -> Result<http::Request<Body>, String> {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match version {
        Version::Http1 => {
            parts.version = HttpVersion::HTTP_11;
            parts.uri = path
                .parse::<Uri>()
                .map_err(|e| format!("path {path:?}: {e}"))?;
            let host = header::HeaderValue::from_str(authority)
                .map_err(|e| format!("authority {authority:?}: {e}"))?;
            parts.headers.insert(header::HOST, host);
        }
        Version::Http2 => {
            parts.version = HttpVersion::HTTP_2;
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path.as_str())
                .build()
                .map_err(|e| format!("authority {authority:?}: {e}"))?;
            parts.headers.remove(header::HOST);
        }
    }
    Ok(http::Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-app", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn the_uri_takes_the_form_the_upstream_version_wants() {
        let (parts, ()) = http::Request::get("http://orders.shop:80/v1/x?a=1")
            .body(())
            .unwrap()
            .into_parts();
        use http_body_util::BodyExt as _;
        let empty = || http_body_util::Empty::new().map_err(|e| match e {}).boxed();
        let h1 = build(
            copy_parts(&parts),
            empty(),
            Version::Http1,
            "orders.shop",
            false,
        )
        .unwrap();
        assert_eq!(h1.uri(), "/v1/x?a=1");
        assert_eq!(h1.headers()["host"], "orders.shop");
        let h2 = build(parts, empty(), Version::Http2, "orders.shop", false).unwrap();
        assert_eq!(h2.uri(), "http://orders.shop/v1/x?a=1");
        assert!(!h2.headers().contains_key("host"));
    }
}
