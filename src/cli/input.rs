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
    for (i, value) in documents.iter().enumerate() {
        let doc = format!("document {}", i + 1);
        embedded_in(
            value,
            &doc,
            all,
            &patched,
            &mut |location, json, body_setting| {
                found.push(Embedded {
                    file: file.to_string(),
                    location,
                    json,
                    body_setting,
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

type Found<'a> = dyn FnMut(String, Vec<u8>, BodySetting) + 'a;

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
                );
            }
        }
        _ => walk(value, &mut String::new(), &mut |path, filter| {
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
                out(format!("{doc}: {path}.configuration.value"), bytes, setting);
            }
        }),
    }
}

/// Calls `found` for the `config` of every Wasm HTTP filter's `typed_config` under `value`.
fn walk(value: &Value, path: &mut String, found: &mut dyn FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                if let Some(config) = map.get("config") {
                    found(&format!("{path}.config"), config);
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
                walk(v, path, found);
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
