//! `rules[].propagate`, `from_lane`, `lane_fallback` and `lane_secret`: the plan's lane
//! carriers, each rule's part in them, and the key (`crate::lane`).

use super::fields::{compile_secret, destination_index, field, is_token_byte, routing_header_name};
use super::Destination;
use crate::config::{ConfigError, PropagateConfig};
use crate::lane::{Carrier, LaneCarrier, Lanes, RuleLane};

/// One rule's lane fields as written.
pub(super) struct RuleLaneConfig {
    pub propagate: Option<PropagateConfig>,
    pub from_lane: bool,
    pub lane_fallback: Option<String>,
}

/// Baggage keys are RFC 9110 tokens (W3C Baggage); bounded like names.
const MAX_BAGGAGE_KEY_LEN: usize = 64;

/// Compiles one rule's lane fields, adding its carrier to `lanes` (each carrier once; a carrier
/// is read when any rule routes by it). `routing_headers` are the cluster and variant headers,
/// which a lane header must not be.
pub(super) fn compile_rule_lane(
    path: &str,
    config: RuleLaneConfig,
    destinations: &[Destination],
    routing_headers: &[&str],
    lanes: &mut Lanes,
    slots: &mut usize,
) -> Result<Option<RuleLane>, ConfigError> {
    let Some(propagate) = config.propagate else {
        if config.from_lane {
            return Err(ConfigError::new(
                field(path, "from_lane"),
                "needs \"propagate\": where the lane is read from and passed on",
            ));
        }
        if config.lane_fallback.is_some() {
            return Err(ConfigError::new(
                field(path, "lane_fallback"),
                "only applies with \"from_lane\": true",
            ));
        }
        return Ok(None);
    };
    let ppath = field(path, "propagate");
    let carrier = match (propagate.header, propagate.baggage) {
        (Some(header), None) => {
            let hpath = field(&ppath, "header");
            let name = routing_header_name(&hpath, &header)?;
            if routing_headers.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    hpath,
                    "must differ from cluster_header and variant_header",
                ));
            }
            Carrier::Header(name)
        }
        (None, Some(key)) => {
            let ok = !key.is_empty()
                && key.len() <= MAX_BAGGAGE_KEY_LEN
                && key.bytes().all(is_token_byte);
            if !ok {
                return Err(ConfigError::at(
                    field(&ppath, "baggage"),
                    format_args!(
                        "\"{key}\" must be a baggage key: 1-{MAX_BAGGAGE_KEY_LEN} token characters"
                    ),
                ));
            }
            Carrier::Baggage(key)
        }
        _ => {
            return Err(ConfigError::new(
                ppath,
                "must set exactly one of \"header\" and \"baggage\"",
            ))
        }
    };
    let fallback = match config.lane_fallback {
        None => None,
        Some(_) if !config.from_lane => {
            return Err(ConfigError::new(
                field(path, "lane_fallback"),
                "only applies with \"from_lane\": true",
            ))
        }
        Some(name) => Some(destination_index(
            &field(path, "lane_fallback"),
            destinations,
            &name,
        )?),
    };
    let index = match lanes.carriers.iter().position(|c| c.carrier == carrier) {
        Some(i) => i,
        None => {
            lanes.carriers.push(LaneCarrier {
                carrier,
                read: false,
            });
            lanes.carriers.len() - 1
        }
    };
    if let Some(c) = lanes.carriers.get_mut(index) {
        c.read |= config.from_lane;
    }
    let slot = *slots;
    *slots += 1;
    Ok(Some(RuleLane {
        carrier: index,
        from_lane: config.from_lane,
        fallback,
        slot,
    }))
}

pub(super) fn compile_lane_secret(secret: Option<&str>) -> Result<Lanes, ConfigError> {
    Ok(Lanes {
        carriers: Vec::new(),
        key: secret
            .map(|s| compile_secret("lane_secret", s))
            .transpose()?,
    })
}
