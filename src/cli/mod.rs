//! The operator CLI: `traffic-split validate | explain | diff | bucket | schema | rollout |
//! judge`.
//!
//! Everything here runs the filter's own code (`config::parse`, `Plan::compile`,
//! `Plan::decide`, `bucket::*`): the CLI adds presentation, never a second implementation.
//! Exit codes: 0 success, 1 an invalid configuration (or input holding none), 2 bad usage
//! (clap's own exit code for argument errors) or an unreadable file.

/// `println!` that ignores a closed stdout (`traffic-split diff … | head` must not panic).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

pub mod analysis;
pub mod diff;
pub mod input;
pub mod schema;

use crate::bucket;
use crate::config::HashKind;
use crate::plan::Plan;
use clap::{Parser, Subcommand, ValueEnum};
use input::{Embedded, InputError};
use serde_json::json;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "traffic-split",
    version,
    about = "Check traffic-split configurations before they reach a proxy: validate, explain \
             a decision, diff two configurations, compute a bucket, print the JSON Schema.",
    after_help = "Inputs: a JSON configuration, or a YAML file embedding one (Istio WasmPlugin \
                  spec.pluginConfig, Envoy Gateway EnvoyExtensionPolicy spec.wasm[].config, \
                  Envoy bootstrap/listener Wasm filters); `-` reads stdin.\n\
                  Exit codes: 0 success, 1 invalid configuration, 2 bad usage or unreadable file."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check configurations with the filter's parser and validator; print every error (field
    /// path and reason, as the filter logs it) and warnings
    Validate {
        /// JSON or YAML files (`-`: stdin)
        #[arg(required = true)]
        files: Vec<String>,
        /// In Envoy YAML, take every Wasm filter, not only those whose code names traffic_split
        #[arg(long)]
        all: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show which rule a request matches and why, the user key, salt, hash, bucket and
    /// destination, cookie assignment, shadows and breaker fallback
    Explain(ExplainArgs),
    /// Compare two configurations: per rule (by name) the exact share of sticky users whose
    /// destination changes, rules added/removed/reordered, changes to non-sticky routing
    Diff {
        old: String,
        new: String,
        /// Also say whether this user key moves, per rule
        #[arg(long, value_name = "KEY")]
        user: Option<String>,
        /// In Envoy YAML, take every Wasm filter
        #[arg(long)]
        all: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the bucket of a user key, to line the filter up with a flag system
    Bucket {
        #[arg(long)]
        salt: String,
        #[arg(long)]
        key: String,
        #[arg(long, value_enum, default_value_t = Hash::Fine)]
        hash: Hash,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema (draft 2020-12) of the configuration
    Schema,
    /// Print each rule's rollout schedule and the step and share in force at a time
    Rollout {
        file: String,
        /// RFC 3339 time with a zone (default: now)
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Which configuration of a YAML file holding several (0-based)
        #[arg(long, default_value_t = 0)]
        nth: usize,
        /// In Envoy YAML, take every Wasm filter
        #[arg(long)]
        all: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the verdict the filter's judge gives a window with these counts, and why (errors
    /// only: latency needs the histograms the filter keeps)
    Judge(JudgeArgs),
}

#[derive(clap::Args)]
pub struct JudgeArgs {
    /// The canary's window: REQUESTS/FAILURES (e.g. 412/33)
    #[arg(long, value_name = "N/F", value_parser = counts)]
    pub canary: (u64, u64),
    /// The baseline's window: REQUESTS/FAILURES (e.g. 3950/44)
    #[arg(long, value_name = "N/F", value_parser = counts)]
    pub baseline: (u64, u64),
    /// Judge as this configuration's rule does (default: the judge defaults)
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// The rule whose judge applies (default: the only rule with a judge)
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,
    /// Which configuration of a YAML file holding several (0-based)
    #[arg(long, default_value_t = 0)]
    pub nth: usize,
    /// In Envoy YAML, take every Wasm filter
    #[arg(long)]
    pub all: bool,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

fn counts(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{s}` is not REQUESTS/FAILURES (e.g. 412/33)");
    let (n, f) = s.split_once('/').ok_or_else(bad)?;
    let (n, f): (u64, u64) = (
        n.trim().parse().map_err(|_| bad())?,
        f.trim().parse().map_err(|_| bad())?,
    );
    if f > n {
        return Err(format!("`{s}`: more failures than requests"));
    }
    Ok((n, f))
}

#[derive(Clone, Copy, ValueEnum)]
enum Hash {
    Fine,
    Unleash,
}

impl From<Hash> for HashKind {
    fn from(h: Hash) -> HashKind {
        match h {
            Hash::Fine => HashKind::Fine,
            Hash::Unleash => HashKind::Unleash,
        }
    }
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// JSON or YAML file (`-`: stdin)
    pub file: String,
    /// A request header, `name=value` (repeatable)
    #[arg(long = "header", value_name = "K=V", value_parser = key_value)]
    pub headers: Vec<(String, String)>,
    /// A cookie, `name=value` (repeatable; sent in one Cookie header)
    #[arg(long = "cookie", value_name = "K=V", value_parser = key_value)]
    pub cookies: Vec<(String, String)>,
    /// A query parameter, `name=value` (repeatable; appended to the path as written)
    #[arg(long = "query", value_name = "K=V", value_parser = key_value)]
    pub query: Vec<(String, String)>,
    /// `:path` (without the query)
    #[arg(long, default_value = "/")]
    pub path: String,
    /// `:method` (default GET; POST with --body)
    #[arg(long)]
    pub method: Option<String>,
    /// The JSON request body for `match.body`: `@FILE` or the text itself (adds
    /// `content-type: application/json` unless --header sets one)
    #[arg(long, value_name = "@FILE|JSON")]
    pub body: Option<String>,
    /// `:authority` (the Host)
    #[arg(long)]
    pub authority: Option<String>,
    /// Envoy's route name (`xds.route_name`)
    #[arg(long)]
    pub route_name: Option<String>,
    /// When to decide, for rollouts (RFC 3339 with a zone; default: now)
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Which configuration of a YAML file holding several (0-based)
    #[arg(long, default_value_t = 0)]
    pub nth: usize,
    /// In Envoy YAML, take every Wasm filter
    #[arg(long)]
    pub all: bool,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

/// The outcome of a command: its exit code, with an error message for stderr.
pub enum Failure {
    Invalid(String),
    Usage(String),
}

impl ExplainArgs {
    /// `:method`: as given, else POST with a body and GET without.
    pub fn method(&self) -> &str {
        match (&self.method, &self.body) {
            (Some(m), _) => m,
            (None, Some(_)) => "POST",
            (None, None) => "GET",
        }
    }
}

impl From<InputError> for Failure {
    fn from(e: InputError) -> Failure {
        match e {
            InputError::Unreadable(m) => Failure::Usage(m),
            InputError::Invalid(m) => Failure::Invalid(m),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files, all, json } => validate(&files, all, json),
        Command::Explain(args) => analysis::explain(&args),
        Command::Diff {
            old,
            new,
            user,
            all,
            json,
        } => diff::diff(&old, &new, user.as_deref(), all, json),
        Command::Bucket {
            salt,
            key,
            hash,
            json,
        } => {
            let kind = HashKind::from(hash);
            let b = bucket_of(&salt, &key, kind);
            if json {
                out!(
                    "{}",
                    json!({"salt": salt, "key": key, "hash": hash_name(kind), "bucket": b})
                );
            } else {
                out!("{b}");
            }
            Ok(())
        }
        Command::Schema => {
            out!("{}", schema::schema_text());
            Ok(())
        }
        Command::Rollout {
            file,
            at,
            nth,
            all,
            json,
        } => analysis::rollout(&file, at.as_deref(), all, nth, json),
        Command::Judge(args) => analysis::judge(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(m)) => {
            eprintln!("traffic-split: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("traffic-split: {m}");
            ExitCode::from(2)
        }
    }
}

/// The bucket the filter computes for `key` under `salt` and `kind`.
pub fn bucket_of(salt: &str, key: &str, kind: HashKind) -> u32 {
    let mut salt_colon = salt.as_bytes().to_vec();
    salt_colon.push(b':');
    bucket::bucket_of_hash(kind, bucket::murmur3_of(&salt_colon, key.as_bytes()))
}

pub fn hash_name(kind: HashKind) -> &'static str {
    match kind {
        HashKind::Fine => "fine",
        HashKind::Unleash => "unleash",
    }
}

/// The result of validating one embedded configuration.
pub struct Checked {
    pub embedded: Embedded,
    pub plan: Result<Plan, crate::config::ConfigError>,
    pub warnings: Vec<String>,
}

pub fn check(embedded: Embedded) -> Checked {
    let plan = Plan::from_json(&embedded.json);
    let mut warnings = match &plan {
        Ok(p) => {
            let mut w = analysis::warnings(p);
            w.extend(analysis::fault_filter_warnings(p, embedded.fault_filter));
            w
        }
        Err(_) => Vec::new(),
    };
    if let (Ok(p), input::BodySetting::Missing(hint)) = (&plan, &embedded.body_setting) {
        if p.reads_body {
            let rules: Vec<&str> = p
                .rules
                .iter()
                .filter(|r| r.matcher.reads_body())
                .map(|r| r.name.as_str())
                .collect();
            warnings.push(format!(
                "rule(s) {} use match.body, but this Wasm filter lacks {}: true, so Envoy \
                 delivers no body to a held request and the filter decides on headers only \
                 (\"match.body is OFF\" in its log): {hint}",
                rules.join(", "),
                input::BODY_SETTING
            ));
        }
    }
    Checked {
        embedded,
        plan,
        warnings,
    }
}

fn validate(files: &[String], all: bool, as_json: bool) -> Result<(), Failure> {
    let mut invalid = false;
    let mut unreadable = false;
    let mut report = Vec::new();
    for file in files {
        let found = match input::load(file, all) {
            Ok(found) => found,
            Err(e) => {
                let (m, usage) = match e {
                    InputError::Unreadable(m) => (m, true),
                    InputError::Invalid(m) => (m, false),
                };
                unreadable |= usage;
                invalid |= !usage;
                if as_json {
                    report.push(json!({"file": file, "valid": false, "errors": [{"path": "", "reason": m}], "warnings": []}));
                } else {
                    eprintln!("{m}");
                }
                continue;
            }
        };
        for embedded in found {
            let c = check(embedded);
            let label = c.embedded.label();
            if as_json {
                let errors: Vec<_> = c
                    .plan
                    .as_ref()
                    .err()
                    .map(|e| json!({"path": e.path, "reason": e.reason}))
                    .into_iter()
                    .collect();
                report.push(json!({
                    "file": c.embedded.file,
                    "location": c.embedded.location,
                    "valid": c.plan.is_ok(),
                    "errors": errors,
                    "warnings": c.warnings,
                }));
            }
            match &c.plan {
                Ok(p) => {
                    if !as_json {
                        out!(
                            "ok {label}: {} rule(s), {} shadow target(s), {} breaker(s)",
                            p.rules.len(),
                            p.shadow_targets.len(),
                            p.breakers.len()
                        );
                        for w in &c.warnings {
                            out!("warning {label}: {w}");
                        }
                    }
                }
                Err(e) => {
                    invalid = true;
                    if !as_json {
                        out!("error {label}: invalid configuration: {e}");
                    }
                }
            }
        }
    }
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    if unreadable {
        Err(Failure::Usage("some input could not be read".into()))
    } else if invalid {
        Err(Failure::Invalid("invalid configuration".into()))
    } else {
        Ok(())
    }
}

/// The one configuration of `file` a command works on (`nth` of several).
pub fn load_one(file: &str, all: bool, nth: usize) -> Result<Checked, Failure> {
    let found = input::load(file, all)?;
    let count = found.len();
    let embedded = found.into_iter().nth(nth).ok_or_else(|| {
        Failure::Usage(format!(
            "{file}: holds {count} configuration(s); --nth {nth} is out of range"
        ))
    })?;
    let c = check(embedded);
    if let Err(e) = &c.plan {
        return Err(Failure::Invalid(format!(
            "{}: invalid configuration: {e}",
            c.embedded.label()
        )));
    }
    Ok(c)
}
