//! Field-format checks shared by the compile steps: names, header and cookie names, clusters.

use super::{Destination, MAX_NAME_LEN};
use crate::config::ConfigError;
use crate::signing::SigningKey;
/// The path of `name` inside the object at `path` (one function instead of a `format!` at
/// every error site keeps the `.wasm` smaller).
#[inline(never)]
pub(super) fn field(path: &str, name: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1 + name.len());
    out.push_str(path);
    out.push('.');
    out.push_str(name);
    out
}

/// `path[i]`: the path of one list item (shared for the same reason as `field`).
#[inline(never)]
pub(super) fn item(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `path.name[i]`.
pub(super) fn field_item(path: &str, name: &str, i: usize) -> String {
    item(&field(path, name), i)
}

/// The index of the destination called `name` in its rule, or an error at `path` saying it is
/// not one (the one home of this check: fallbacks, lanes, faults and the judge name
/// destinations).
#[inline(never)]
pub(super) fn destination_index(
    path: &str,
    destinations: &[Destination],
    name: &str,
) -> Result<usize, ConfigError> {
    destinations
        .iter()
        .position(|d| d.name == name)
        .ok_or_else(|| {
            ConfigError::at(
                path,
                format_args!("\"{name}\" is not a destination of this rule"),
            )
        })
}

/// Rule and destination names appear in metric names: `[A-Za-z0-9_-]{1,64}`.
pub(super) fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            path,
            format_args!("\"{name}\" must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9_-]"),
        ))
    }
}

/// RFC 9110 token characters (header names, methods, cookie names).
pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validates a header name and returns it in lower case (Envoy's header maps are lower case).
pub(super) fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let body = name.strip_prefix(':').unwrap_or(name);
    if body.is_empty() || !body.bytes().all(is_token_byte) {
        return Err(ConfigError::at(
            path,
            format_args!("\"{name}\" is not a valid header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Request headers that Envoy, proxies or browsers give a meaning to. The filter overwrites or
/// removes `cluster_header` and `variant_header` on every request, so naming one of these would
/// clobber the request (`host`, `cookie`), break its framing (`content-length`) or let a
/// browser-controlled value collide with routing.
pub(super) const RESERVED_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "set-cookie",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "via",
    "date",
    "origin",
    "referer",
    "authorization",
    "cache-control",
    "pragma",
    "range",
    "accept",
    "accept-encoding",
    "accept-charset",
    "accept-language",
    "user-agent",
    "dnt",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-client-cert",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "baggage",
    // The filter's own shadow marker: it screens and rewrites this header on every request.
    "x-shadow-request",
];

/// Prefixes of the same kind: Envoy's own control headers, the Fetch standard's forbidden
/// `sec-`/`proxy-` names, CORS and conditional requests, Zipkin trace context.
pub(super) const RESERVED_HEADER_PREFIXES: &[&str] = &[
    "x-envoy-",
    "sec-",
    "proxy-",
    "access-control-",
    "if-",
    "x-b3-",
];

/// `cluster_header` / `variant_header`: a valid header name that is neither a pseudo-header
/// nor one of the reserved names above, in lower case.
pub(super) fn routing_header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let lower = header_name(path, name)?;
    if lower.starts_with(':') {
        return Err(ConfigError::at(
            path,
            format_args!("\"{name}\" is a pseudo-header: use a header name of your own"),
        ));
    }
    let reserved = RESERVED_HEADERS.contains(&lower.as_str())
        || RESERVED_HEADER_PREFIXES
            .iter()
            .any(|p| lower.starts_with(p));
    if reserved {
        return Err(ConfigError::at(
            path,
            format_args!(
                "\"{name}\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"
            ),
        ));
    }
    Ok(lower)
}

pub(super) fn check_cookie_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(ConfigError::at(
            path,
            format_args!("\"{name}\" is not a valid cookie name"),
        ));
    }
    Ok(())
}

/// The cluster is written into a request header: it must be a non-empty, visible-ASCII value.
pub(super) fn check_cluster(path: &str, cluster: &str) -> Result<(), ConfigError> {
    if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::at(
            path,
            format_args!(
                "\"{cluster}\" must be a non-empty cluster name of visible ASCII characters"
            ),
        ));
    }
    Ok(())
}

/// A secret shared by every instance of the deployment (`shadow_marker_secret`,
/// `lane_secret`): long enough not to be guessed, and printable so it survives YAML, JSON and
/// Istio's `pluginConfig` unchanged.
pub(super) fn compile_secret(path: &str, secret: &str) -> Result<SigningKey, ConfigError> {
    let len = secret.len();
    if !(16..=256).contains(&len) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::at(
            path,
            format_args!("must be 16 to 256 visible ASCII characters, got {len} characters"),
        ));
    }
    Ok(SigningKey::from_secret(secret.as_bytes()))
}
