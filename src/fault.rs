//! Envoy's fault filter (`envoy.filters.http.fault`) as the filter drives it: the request
//! headers it reads when configured with `header_delay` / `header_abort`, and the response
//! flags by which the filter learns what it did. Envoy does not strip these headers from
//! clients, so the host removes every `x-envoy-fault-*` header a client sends (`is_fault_header`)
//! before it writes its own for the requests of a rule's fault slice (`plan::FaultPolicy`).

/// What every fault-filter header starts with (Envoy's `x-envoy` prefix + `-fault-`).
pub const FAULT_HEADER_PREFIX: &str = "x-envoy-fault-";
/// Milliseconds to delay the request (`header_delay`).
pub const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
/// Share of requests carrying `DELAY_REQUEST` that are delayed: a numerator over the
/// denominator of the fault filter's `delay.percentage`, capped by its numerator.
pub const DELAY_REQUEST_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
/// HTTP status to abort with, 200..600 (`header_abort`).
pub const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
/// gRPC status to abort with (HTTP 200, `grpc-status` set; `header_abort`).
pub const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
/// Share of requests carrying an abort header that are aborted (both kinds), as
/// `DELAY_REQUEST_PERCENTAGE` for `abort.percentage`.
pub const ABORT_REQUEST_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
/// Every header Envoy's fault filter reads (1.36-1.40): what is removed by name from requests
/// whose header map the filter does not read (no rule looks at request attributes, or the
/// read failed).
pub const READ_BY_ENVOY: [&str; 7] = [
    DELAY_REQUEST,
    DELAY_REQUEST_PERCENTAGE,
    ABORT_REQUEST,
    ABORT_GRPC_REQUEST,
    ABORT_REQUEST_PERCENTAGE,
    "x-envoy-fault-throughput-response",
    "x-envoy-fault-throughput-response-percentage",
];
/// The numerator the filter writes with each fault header: every request it marks gets the
/// fault, provided the fault filter's `percentage` is 100/HUNDRED (the shipped configuration;
/// Envoy takes the smaller of the two numerators).
pub const ALL: &str = "100";

/// Whether a request header is one the fault filter (or a later version of it) reads.
/// Header names from Envoy are lower case.
pub fn is_fault_header(name: &str) -> bool {
    name.starts_with(FAULT_HEADER_PREFIX)
}

/// Envoy's response flag bits (the `response.flags` property, a little-endian i64): a delay
/// injected by the fault filter (`DI`) and an abort injected by it (`FI`).
pub const FLAG_DELAY_INJECTED: u64 = 0x200;
pub const FLAG_FAULT_INJECTED: u64 = 0x400;

/// `(delayed, aborted)` from the bytes of the `response.flags` property.
pub fn injected(flags: &[u8]) -> (bool, bool) {
    let mut le = [0u8; 8];
    for (d, s) in le.iter_mut().zip(flags) {
        *d = *s;
    }
    let flags = u64::from_le_bytes(le);
    (
        flags & FLAG_DELAY_INJECTED != 0,
        flags & FLAG_FAULT_INJECTED != 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_headers_and_flags() {
        for name in [
            DELAY_REQUEST,
            DELAY_REQUEST_PERCENTAGE,
            ABORT_REQUEST,
            ABORT_GRPC_REQUEST,
            ABORT_REQUEST_PERCENTAGE,
            "x-envoy-fault-throughput-response",
        ] {
            assert!(is_fault_header(name), "{name}");
        }
        assert!(!is_fault_header("x-envoy-faults"));
        assert!(!is_fault_header("x-split-cluster"));
        assert_eq!(injected(&0x600u64.to_le_bytes()), (true, true));
        assert_eq!(injected(&0x200u64.to_le_bytes()), (true, false));
        assert_eq!(injected(&0x400u64.to_le_bytes()), (false, true));
        assert_eq!(injected(&[]), (false, false));
    }
}
