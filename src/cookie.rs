//! The cookie the filter assigns (`sticky.assign_cookie`): its attributes, and whether the
//! response carrying it must be kept out of shared caches.

use crate::config::SameSite;
use crate::request::trim;

/// What follows `<name>=<id>` in the `Set-Cookie` value, built once per configuration.
/// With the defaults: `; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax` (the README's and
/// scripts/check-demo.sh's format); `Domain` comes after `Path`, `Secure` after `HttpOnly`.
pub fn attributes(
    max_age_s: u64,
    domain: Option<&str>,
    secure: bool,
    same_site: SameSite,
) -> String {
    let mut out = String::from("; Path=/");
    if let Some(domain) = domain {
        out.push_str("; Domain=");
        out.push_str(domain);
    }
    out.push_str("; Max-Age=");
    out.push_str(&max_age_s.to_string());
    out.push_str("; HttpOnly");
    if secure {
        out.push_str("; Secure");
    }
    out.push_str("; SameSite=");
    out.push_str(same_site.as_str());
    out
}

/// Browsers only accept cookies named `__Secure-…` and `__Host-…` with `Secure` (and
/// `__Host-…` only without `Domain`), comparing the prefix case-insensitively (RFC 6265bis).
pub fn has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// Whether a response whose (first) `Cache-Control` value is `cache_control` already keeps
/// shared caches from storing it: an unqualified `private` or a `no-store` directive. Anything
/// else (no header, `public`, `max-age=…`, `private="x"` naming other fields) does not, and the
/// filter adds `Cache-Control: private`, or a shared cache could hand one user's id to everyone.
pub fn kept_from_shared_caches(cache_control: Option<&[u8]>) -> bool {
    let Some(value) = cache_control else {
        return false;
    };
    let mut in_quotes = false;
    let mut start = 0;
    for end in 0..=value.len() {
        let byte = value.get(end).copied();
        match byte {
            Some(b'"') => in_quotes = !in_quotes,
            Some(b',') | None if !in_quotes => {
                let directive = trim(value.get(start..end).unwrap_or(&[]));
                if directive.eq_ignore_ascii_case(b"no-store")
                    || directive.eq_ignore_ascii_case(b"private")
                {
                    return true;
                }
                start = end + 1;
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_attributes_keep_the_documented_format() {
        assert_eq!(
            attributes(2_592_000, None, false, SameSite::Lax),
            "; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            attributes(60, Some("example.com"), true, SameSite::None),
            "; Path=/; Domain=example.com; Max-Age=60; HttpOnly; Secure; SameSite=None"
        );
        assert_eq!(
            attributes(1, None, true, SameSite::Strict),
            "; Path=/; Max-Age=1; HttpOnly; Secure; SameSite=Strict"
        );
    }

    #[test]
    fn prefixes_compare_case_insensitively() {
        assert!(has_prefix("__Host-uid", "__Host-"));
        assert!(has_prefix("__host-uid", "__Host-"));
        assert!(!has_prefix("__Hos", "__Host-"));
        assert!(!has_prefix("uid", "__Secure-"));
        assert!(!has_prefix("é", "__Host-"));
    }

    #[test]
    fn which_cache_control_values_already_keep_shared_caches_out() {
        for kept in [
            "private",
            "no-store",
            "No-Store",
            "max-age=60, private",
            " public ,\tno-store ",
            "no-cache=\"a, b\", PRIVATE",
        ] {
            assert!(kept_from_shared_caches(Some(kept.as_bytes())), "{kept}");
        }
        for shared in [
            "",
            "public",
            "max-age=600",
            "s-maxage=60, must-revalidate",
            "private=\"x-other\"",
            "no-cache=\"private, no-store\"",
            "privately",
            "no-store-ish",
        ] {
            assert!(
                !kept_from_shared_caches(Some(shared.as_bytes())),
                "{shared}"
            );
        }
        assert!(!kept_from_shared_caches(None));
        assert!(!kept_from_shared_caches(Some(b"\xff\"")));
    }
}
