//! Reading configurations: a JSON file, or a YAML file embedding them (Istio `WasmPlugin`,
//! Envoy Gateway `EnvoyExtensionPolicy`, Envoy bootstrap/listener YAML); `-` is stdin.

use serde::Deserialize;
use serde_json::Value;
use std::io::Read;

/// The Envoy type of the Wasm HTTP filter's `typed_config`.
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// One filter configuration found in an input file.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub file: String,
    /// Where in the YAML it sits (`document 1 (WasmPlugin traffic-split): spec.pluginConfig`);
    /// empty for a JSON file.
    pub location: String,
    /// The JSON the filter would receive.
    pub json: Vec<u8>,
    /// Whether the Wasm PluginConfig around it sets `allow_on_headers_stop_iteration: true`
    /// (what `match.body` needs).
    pub body_setting: BodySetting,
    /// Where Envoy's fault filter with header control sits, when the input tells (`None`: a
    /// JSON file, or a chain the input does not show).
    pub fault_filter: Option<FaultFilterSite>,
}

/// Envoy's fault filter with header control (`header_delay` / `header_abort`) around a Wasm
/// filter: in its HTTP filter chain (an Envoy YAML), or in the same file (an Istio EnvoyFilter or
/// an Envoy Gateway EnvoyPatchPolicy beside a WasmPlugin or an EnvoyExtensionPolicy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultFilterSite {
    /// One follows the Wasm filter (before the router): `rules[].fault` can work.
    pub after: bool,
    /// One runs before the Wasm filter: clients' x-envoy-fault-* headers reach it before the
    /// filter removes them.
    pub before: bool,
    /// The input is a Kubernetes manifest (the fault filter comes from another document).
    pub manifest: bool,
}

/// The Envoy type of the fault filter's `typed_config`.
pub const FAULT_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// Whether an HTTP filter entry (`{name, typed_config}`) is Envoy's fault filter with header
/// control of delays or aborts.
fn is_header_fault_filter(entry: &Value) -> bool {
    let Some(config) = entry.get("typed_config") else {
        return false;
    };
    config.get("@type").and_then(Value::as_str) == Some(FAULT_FILTER_TYPE)
        && (config.pointer("/delay/header_delay").is_some()
            || config.pointer("/abort/header_abort").is_some())
}

fn is_router(entry: &Value) -> bool {
    entry.get("name").and_then(Value::as_str) == Some("envoy.filters.http.router")
        || entry
            .pointer("/typed_config/@type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("envoy.extensions.filters.http.router.v3.Router"))
}

/// Whether a document is an Istio EnvoyFilter or Envoy Gateway EnvoyPatchPolicy adding Envoy's
/// fault filter with header control.
fn adds_header_fault_filter(doc: &Value) -> bool {
    let values: Vec<&Value> = match doc.get("kind").and_then(Value::as_str) {
        Some("EnvoyFilter") => doc
            .pointer("/spec/configPatches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.pointer("/patch/value"))
            .collect(),
        Some("EnvoyPatchPolicy") => doc
            .pointer("/spec/jsonPatches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.pointer("/operation/value"))
            .collect(),
        _ => Vec::new(),
    };
    values.into_iter().any(is_header_fault_filter)
}

/// `allow_on_headers_stop_iteration` in what wraps a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySetting {
    /// A bare JSON configuration: the Envoy side is not known here.
    Unknown,
    Set,
    /// Absent, with what to do about it.
    Missing(String),
}

pub const BODY_SETTING: &str = "allow_on_headers_stop_iteration";

impl Embedded {
    /// `file` or `file (location)`.
    pub fn label(&self) -> String {
        if self.location.is_empty() {
            self.file.clone()
        } else {
            format!("{} ({})", self.file, self.location)
        }
    }
}

/// Why an input gave no configuration: the file could not be read (usage, exit 2) or holds
/// none / is not YAML or JSON (an invalid input, exit 1).
#[derive(Debug)]
pub enum InputError {
    Unreadable(String),
    Invalid(String),
}

pub fn read(file: &str) -> Result<Vec<u8>, InputError> {
    let mut bytes = Vec::new();
    let result = if file == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(file).map(|b| bytes = b)
    };
    result.map_err(|e| InputError::Unreadable(format!("{file}: cannot read: {e}")))?;
    Ok(bytes)
}

/// Every traffic-split configuration in `file`. `all`: every Wasm filter of an Envoy YAML, not
/// only those whose `vm_config.code` names this filter.
pub fn load(file: &str, all: bool) -> Result<Vec<Embedded>, InputError> {
    let bytes = read(file)?;
    let name = if file == "-" { "<stdin>" } else { file };
    extract(name, &bytes, all)
}

/// The configurations in `bytes` (named `file` in messages).
pub fn extract(file: &str, bytes: &[u8], all: bool) -> Result<Vec<Embedded>, InputError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    // JSON (or empty: the default configuration) goes to the filter's parser as is, so its
    // messages (line and column of a syntax error) are the filter's.
    if matches!(first, None | Some(b'{') | Some(b'[')) {
        return Ok(vec![Embedded {
            file: file.to_string(),
            location: String::new(),
            json: bytes.to_vec(),
            body_setting: BodySetting::Unknown,
            fault_filter: None,
        }]);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| InputError::Invalid(format!("{file}: not UTF-8: {e}")))?;
    let mut found = Vec::new();
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        documents.push(
            Value::deserialize(document)
                .map_err(|e| InputError::Invalid(format!("{file}: invalid YAML: {e}")))?,
        );
    }
    // Envoy Gateway filters an EnvoyPatchPolicy of this file gives the setting.
    let patched = patched_filters(&documents);
    // For a WasmPlugin or an EnvoyExtensionPolicy: whether the file also adds the fault filter.
    let manifest_site = FaultFilterSite {
        after: documents.iter().any(adds_header_fault_filter),
        before: false,
        manifest: true,
    };
    for (i, value) in documents.iter().enumerate() {
        let doc = format!("document {}", i + 1);
        let manifest = matches!(
            value.get("kind").and_then(Value::as_str),
            Some("WasmPlugin" | "EnvoyExtensionPolicy")
        );
        embedded_in(
            value,
            &doc,
            all,
            &patched,
            &mut |location, json, body_setting, site| {
                found.push(Embedded {
                    file: file.to_string(),
                    location,
                    json,
                    body_setting,
                    fault_filter: if manifest { Some(manifest_site) } else { site },
                })
            },
        );
    }
    if found.is_empty() {
        return Err(InputError::Invalid(format!(
            "{file}: no traffic-split configuration found (looked for a WasmPlugin's \
             spec.pluginConfig, an EnvoyExtensionPolicy's spec.wasm[].config and Envoy Wasm \
             filters{})",
            if all {
                ""
            } else {
                " whose vm_config.code names traffic_split; --all takes every Wasm filter"
            }
        )));
    }
    Ok(found)
}

/// The Wasm filter names (`…/wasm/<i>` of Envoy Gateway) whose config an EnvoyPatchPolicy among
/// `documents` gives `allow_on_headers_stop_iteration: true`.
fn patched_filters(documents: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for d in documents {
        if d.get("kind").and_then(Value::as_str) != Some("EnvoyPatchPolicy") {
            continue;
        }
        let patches = d.pointer("/spec/jsonPatches").and_then(Value::as_array);
        for op in patches
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("operation"))
        {
            let path = op.get("path").and_then(Value::as_str).unwrap_or("");
            let target = op.get("jsonPath").and_then(Value::as_str).unwrap_or("");
            if path.ends_with(BODY_SETTING) && op.get("value") == Some(&Value::Bool(true)) {
                out.push(format!("{target} {path}"));
            }
        }
    }
    out
}

type Found<'a> = dyn FnMut(String, Vec<u8>, BodySetting, Option<FaultFilterSite>) + 'a;

fn embedded_in(value: &Value, doc: &str, all: bool, patched: &[String], out: &mut Found<'_>) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let json = |v: Option<&Value>| match v {
        // No pluginConfig: the filter gets an empty configuration (the default one).
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::to_vec_pretty(v).unwrap_or_default(),
    };
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "WasmPlugin" => out(
            format!("{doc}, WasmPlugin {name}: spec.pluginConfig"),
            json(value.pointer("/spec/pluginConfig")),
            BodySetting::Missing(format!(
                "an Istio WasmPlugin cannot set {BODY_SETTING}: load the filter with an \
                 EnvoyFilter instead (deploy/istio-body-routing/envoyfilter.yaml)"
            )),
            None,
        ),
        "EnvoyExtensionPolicy" => {
            let wasm = value.pointer("/spec/wasm").and_then(Value::as_array);
            for (j, w) in wasm.into_iter().flatten().enumerate() {
                let filter = format!(
                    "envoy.filters.http.wasm/envoyextensionpolicy/{namespace}/{name}/wasm/{j}"
                );
                let setting = if patched.iter().any(|p| p.contains(&filter)) {
                    BodySetting::Set
                } else {
                    BodySetting::Missing(format!(
                        "an EnvoyExtensionPolicy cannot set {BODY_SETTING}: add an EnvoyPatchPolicy \
                         (in this file) that adds it to {filter} and raises the listener's buffer \
                         limit (deploy/envoy-gateway/envoypatchpolicy.yaml)"
                    ))
                };
                out(
                    format!("{doc}, EnvoyExtensionPolicy {name}: spec.wasm[{j}].config"),
                    json(w.get("config")),
                    setting,
                    None,
                );
            }
        }
        _ => walk(value, &mut String::new(), &mut |path, filter, site| {
            if all || names_this_filter(filter) {
                let configuration = filter.pointer("/configuration/value");
                let bytes = match configuration {
                    Some(Value::String(s)) => s.clone().into_bytes(),
                    _ => Vec::new(),
                };
                let setting = if filter.get(BODY_SETTING) == Some(&Value::Bool(true)) {
                    BodySetting::Set
                } else {
                    BodySetting::Missing(format!(
                        "set {BODY_SETTING}: true in this Wasm filter's config (Envoy >= 1.35)"
                    ))
                };
                out(
                    format!("{doc}: {path}.configuration.value"),
                    bytes,
                    setting,
                    site,
                );
            }
        }),
    }
}

type Walked<'a> = dyn FnMut(&str, &Value, Option<FaultFilterSite>) + 'a;

/// Calls `found` for the `config` of every Wasm HTTP filter's `typed_config` under `value`,
/// with where the fault filter sits when the filter is an entry of an HTTP filter list.
fn walk(value: &Value, path: &mut String, found: &mut Walked<'_>) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                if let Some(config) = map.get("config") {
                    found(&format!("{path}.config"), config, None);
                }
                return;
            }
            for (k, v) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(v, path, found);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let wasm = v.pointer("/typed_config/@type").and_then(Value::as_str)
                    == Some(WASM_FILTER_TYPE);
                match v.pointer("/typed_config/config") {
                    Some(config) if wasm => {
                        let later = items.iter().skip(i + 1);
                        let site = FaultFilterSite {
                            after: later
                                .take_while(|e| !is_router(e))
                                .any(is_header_fault_filter),
                            before: items.iter().take(i).any(is_header_fault_filter),
                            manifest: false,
                        };
                        found(&format!("{path}.typed_config.config"), config, Some(site));
                    }
                    _ => walk(v, path, found),
                }
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A Wasm filter is this one when its code is a `traffic_split` / `traffic-split` module or its
/// root_id / name is `traffic-split`.
fn names_this_filter(config: &Value) -> bool {
    let code = config
        .pointer("/vm_config/code")
        .map(Value::to_string)
        .unwrap_or_default();
    code.contains("traffic_split")
        || code.contains("traffic-split")
        || config.get("root_id").and_then(Value::as_str) == Some("traffic-split")
        || config.get("name").and_then(Value::as_str) == Some("traffic-split")
}
