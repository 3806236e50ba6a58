//! `rules[].sticky`: where the user key comes from, and the cookie the filter may assign.

use super::fields::{check_cookie_name, field, header_name};
use super::{Sticky, StickyKey};
use crate::config::{ConfigError, SameSite, StickyConfig, DEFAULT_COOKIE_MAX_AGE_S};
use crate::cookie;
#[inline(never)]
pub(super) fn compile_sticky(path: &str, mut sticky: StickyConfig) -> Result<Sticky, ConfigError> {
    let key = match (
        sticky.header.take(),
        sticky.cookie.take(),
        sticky.query.take(),
    ) {
        (Some(h), None, None) => StickyKey::Header(header_name(&field(path, "header"), &h)?),
        (None, Some(c), None) => {
            check_cookie_name(&field(path, "cookie"), &c)?;
            StickyKey::Cookie(c)
        }
        (None, None, Some(q)) => {
            if q.is_empty() {
                return Err(ConfigError::new(field(path, "query"), "must not be empty"));
            }
            StickyKey::Query(q)
        }
        _ => {
            return Err(ConfigError::new(
                path,
                "must name exactly one user key: \"header\", \"cookie\" or \"query\"",
            ))
        }
    };
    let cookie_name = match &key {
        StickyKey::Cookie(name) => Some(name.as_str()),
        _ => None,
    };
    if sticky.assign_cookie && cookie_name.is_none() {
        return Err(ConfigError::new(
            field(path, "assign_cookie"),
            "only applies to a cookie user key (\"cookie\": NAME)",
        ));
    }
    let cookie_only = [
        ("cookie_max_age_s", sticky.cookie_max_age_s.is_some()),
        ("cookie_secure", sticky.cookie_secure.is_some()),
        ("cookie_domain", sticky.cookie_domain.is_some()),
        ("cookie_same_site", sticky.cookie_same_site.is_some()),
    ];
    for (name, given) in cookie_only {
        if given && !sticky.assign_cookie {
            return Err(ConfigError::new(
                field(path, name),
                "only applies with \"assign_cookie\": true",
            ));
        }
    }
    let assign_cookie = match cookie_name.filter(|_| sticky.assign_cookie) {
        Some(name) => Some(compile_assigned_cookie(path, name, &sticky)?),
        None => None,
    };
    Ok(Sticky { key, assign_cookie })
}

/// The attributes of the cookie the filter assigns, checked so browsers keep it: a cookie a
/// browser drops would give the user a new id, and maybe a new version, on every request.
pub(super) fn compile_assigned_cookie(
    path: &str,
    name: &str,
    sticky: &StickyConfig,
) -> Result<String, ConfigError> {
    let max_age = sticky.cookie_max_age_s.unwrap_or(DEFAULT_COOKIE_MAX_AGE_S);
    if max_age == 0 {
        return Err(ConfigError::new(
            field(path, "cookie_max_age_s"),
            "must be at least 1 (Max-Age=0 deletes the cookie at once)",
        ));
    }
    let secure = sticky.cookie_secure.unwrap_or(false);
    let same_site = sticky.cookie_same_site.unwrap_or_default();
    if same_site == SameSite::None && !secure {
        return Err(ConfigError::new(
            field(path, "cookie_same_site"),
            "\"None\" requires \"cookie_secure\": true (browsers reject SameSite=None cookies without Secure)",
        ));
    }
    for prefix in ["__Host-", "__Secure-"] {
        if cookie::has_prefix(name, prefix) && !secure {
            return Err(ConfigError::at(
                field(path, "cookie"),
                format_args!("\"{name}\" requires \"cookie_secure\": true (browsers reject {prefix} cookies without Secure)"),
            ));
        }
    }
    let domain = sticky.cookie_domain.as_deref();
    if let Some(domain) = domain {
        if cookie::has_prefix(name, "__Host-") {
            return Err(ConfigError::at(
                field(path, "cookie_domain"),
                format_args!("must not be set for \"{name}\" (browsers reject __Host- cookies with a Domain)"),
            ));
        }
        check_cookie_domain(&field(path, "cookie_domain"), domain)?;
    }
    Ok(cookie::attributes(max_age, domain, secure, same_site))
}

/// A host name (letters, digits, `-`, `.`; an optional leading `.` that browsers ignore): the
/// value is written into `Set-Cookie` as it is, so nothing may end the attribute early.
pub(super) fn check_cookie_domain(path: &str, domain: &str) -> Result<(), ConfigError> {
    let host = domain.strip_prefix('.').unwrap_or(domain);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            path,
            format_args!("\"{domain}\" is not a domain name"),
        ))
    }
}
