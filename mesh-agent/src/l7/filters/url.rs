//! Request URL pieces: the host and port the client called, path rewriting, and the
//! `Location` of a redirect, built as the Gateway API spec says.

use http::{header, HeaderValue, StatusCode, Uri};

use crate::state::routes::Redirect;

/// The request's scheme: the URI's (HTTP/2 `:scheme`), else `http` (the mesh's traffic arrives
/// in plaintext from the application).
pub fn scheme(req: &http::request::Parts) -> String {
    req.uri.scheme_str().unwrap_or("http").to_owned()
}

pub fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// The authority the client called: the URI's (HTTP/2 `:authority`, absolute form), else Host.
fn authority(req: &http::request::Parts) -> Option<String> {
    if let Some(a) = req.uri.authority() {
        return Some(a.as_str().to_owned());
    }
    let host = req.headers.get(header::HOST)?.to_str().ok()?;
    Some(host.to_owned())
}

/// Splits `host[:port]` (`[v6]:port` too).
fn split_host(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((v6, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (&authority[..v6.len() + 2], port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// The port in the Host header (or `:authority`), if it names one.
pub fn host_port(req: &http::request::Parts) -> Option<u16> {
    split_host(&authority(req)?).1
}

/// ReplacePrefixMatch: `prefix` (segment-wise, trailing `/` ignored) replaced by
/// `replacement` (trailing `/` ignored), so `/foo/bar` with `/foo` → `/xyz` is `/xyz/bar`, and
/// the result is never empty. A path the prefix does not match is left as it is.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let Some(rest) = path.strip_prefix(prefix) else {
        return path.to_owned();
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return path.to_owned();
    }
    let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
    if joined.is_empty() {
        "/".into()
    } else if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Replaces the path, keeping the query, scheme and authority.
pub fn set_path(req: &mut http::request::Parts, path: &str) {
    let pq = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut b = Uri::builder();
    if let Some(s) = req.uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = req.uri.authority() {
        b = b.authority(a.clone());
    }
    // The replacement was checked at parse to be URL path characters; should the URI still
    // not build, the request keeps its path rather than losing it.
    if let Ok(uri) = b.path_and_query(pq).build() {
        req.uri = uri;
    }
}

/// URLRewrite hostname: the Host header (and an absolute URI's authority) becomes `host`.
pub fn set_host(req: &mut http::request::Parts, host: &str) {
    let Ok(value) = HeaderValue::from_str(host) else {
        return;
    };
    req.headers.insert(header::HOST, value);
    if req.uri.authority().is_some() {
        let mut b = Uri::builder().authority(host);
        if let Some(s) = req.uri.scheme() {
            b = b.scheme(s.clone());
        }
        if let Some(pq) = req.uri.path_and_query() {
            b = b.path_and_query(pq.clone());
        }
        if let Ok(uri) = b.build() {
            req.uri = uri;
        }
    }
}

/// The `Location` of a redirect: scheme, host and path from the filter where it gives them,
/// else from the request; the port from the filter, else the new scheme's well-known port when
/// the filter changes the scheme, else the frontend port the client called; the port left out
/// when it is the scheme's default (http 80, https 443). The query is kept.
pub fn location(
    r: &Redirect,
    prefix: Option<&str>,
    req: &http::request::Parts,
    frontend_port: u16,
) -> String {
    let scheme = r.scheme.clone().unwrap_or_else(|| scheme(req));
    let called = authority(req).unwrap_or_default();
    let host = match &r.hostname {
        Some(h) => h.as_str(),
        None => split_host(&called).0,
    };
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => default_port(s),
        (None, None) => frontend_port,
    };
    let path = match &r.path {
        Some(m) => super::new_path(m, prefix, req.uri.path()),
        None => req.uri.path().to_owned(),
    };
    let mut out = format!("{scheme}://{host}");
    if port != default_port(&scheme) || (scheme != "http" && scheme != "https") {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(&path);
    if let Some(q) = req.uri.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The redirect response (no body).
pub fn redirect(
    r: &Redirect,
    prefix: Option<&str>,
    req: &http::request::Parts,
    frontend_port: u16,
) -> http::Response<()> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    let mut resp = http::Response::new(());
    match HeaderValue::from_str(&location(r, prefix, req, frontend_port)) {
        Ok(loc) => {
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        // Only a Host header with bytes a Location cannot carry gets here.
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}
