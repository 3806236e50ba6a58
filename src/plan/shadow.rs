//! `rules[].shadow[]` and `shadow_marker_secret`: shadow targets, named and shared by name.

use super::fields::{check_cluster, check_name, field, field_item, header_name};
use super::matching::compile_methods;
use super::MAX_NAME_LEN;
use crate::config::{ConfigError, ShadowConfig};
use crate::rng::sample_threshold;
use crate::shadow::{ShadowPolicy, ShadowTarget};
use std::time::Duration;
/// The default metric name of a shadow target: its cluster with every character outside
/// `[A-Za-z0-9_-]` replaced by `_` (Istio clusters look like `outbound|8080||svc.ns.svc…`).
pub fn default_shadow_name(cluster: &str) -> String {
    cluster
        .chars()
        .take(MAX_NAME_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[inline(never)]
pub(super) fn compile_shadow(
    path: &str,
    shadow: ShadowConfig,
    targets: &mut Vec<ShadowTarget>,
) -> Result<ShadowPolicy, ConfigError> {
    check_cluster(&field(path, "cluster"), &shadow.cluster)?;
    let name = match shadow.name {
        Some(name) => {
            check_name(&field(path, "name"), &name)?;
            name
        }
        None => default_shadow_name(&shadow.cluster),
    };
    let target = match targets.iter().position(|t| t.name == name) {
        Some(existing) => {
            let cluster = targets.get(existing).map_or("", |t| t.cluster.as_str());
            if cluster != shadow.cluster {
                return Err(ConfigError::at(
                    field(path, "name"),
                    format_args!(
                        "shadow name \"{name}\" already stands for cluster \"{cluster}\"; give this one another \"name\""
                    ),
                ));
            }
            existing
        }
        None => {
            targets.push(ShadowTarget {
                name,
                cluster: shadow.cluster.clone(),
            });
            targets.len() - 1
        }
    };
    if shadow.timeout_ms == 0 {
        return Err(ConfigError::new(
            field(path, "timeout_ms"),
            "must be at least 1",
        ));
    }
    if !shadow.host_suffix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::at(
            field(path, "host_suffix"),
            format_args!(
                "\"{}\" must be visible ASCII characters",
                shadow.host_suffix
            ),
        ));
    }
    let methods = match shadow.methods {
        None => None,
        Some(methods) => Some(compile_methods(&field(path, "methods"), methods)?),
    };
    let mut remove_headers = Vec::with_capacity(shadow.remove_headers.len());
    for (i, h) in shadow.remove_headers.iter().enumerate() {
        remove_headers.push(header_name(&field_item(path, "remove_headers", i), h)?);
    }
    if shadow.compare_body && !shadow.compare {
        return Err(ConfigError::new(
            field(path, "compare_body"),
            "only applies with \"compare\": true",
        ));
    }
    Ok(ShadowPolicy {
        target,
        cluster: shadow.cluster,
        sample_threshold: sample_threshold(shadow.percent),
        timeout: Duration::from_millis(shadow.timeout_ms),
        host_suffix: shadow.host_suffix,
        methods,
        include_body: shadow.include_body,
        max_body_bytes: shadow.max_body_bytes,
        remove_headers,
        compare: shadow.compare,
        compare_body: shadow.compare_body,
    })
}
