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
}

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
        }]);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| InputError::Invalid(format!("{file}: not UTF-8: {e}")))?;
    let mut found = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| InputError::Invalid(format!("{file}: invalid YAML: {e}")))?;
        let doc = format!("document {}", i + 1);
        embedded_in(&value, &doc, all, &mut |location, json| {
            found.push(Embedded {
                file: file.to_string(),
                location,
                json,
            })
        });
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

fn embedded_in(value: &Value, doc: &str, all: bool, out: &mut dyn FnMut(String, Vec<u8>)) {
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
    match kind {
        "WasmPlugin" => out(
            format!("{doc}, WasmPlugin {name}: spec.pluginConfig"),
            json(value.pointer("/spec/pluginConfig")),
        ),
        "EnvoyExtensionPolicy" => {
            let wasm = value.pointer("/spec/wasm").and_then(Value::as_array);
            for (j, w) in wasm.into_iter().flatten().enumerate() {
                out(
                    format!("{doc}, EnvoyExtensionPolicy {name}: spec.wasm[{j}].config"),
                    json(w.get("config")),
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
                out(format!("{doc}: {path}.configuration.value"), bytes);
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
