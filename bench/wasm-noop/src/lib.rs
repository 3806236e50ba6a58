//! `make bench`'s floor: a proxy-wasm HTTP filter that does nothing. With an empty
//! configuration (the `wasm-noop` scenario) every request gets a stream context whose callbacks
//! make no host call at all: what it costs is what the VM crossings cost.
//!
//! With a configuration, the same module is a probe that makes some of traffic-split's
//! per-request host calls and nothing else, so the bench can tell which calls cost what
//! (the `probe-*` scenarios). The configuration lists them, comma-separated:
//!   `get_headers`  read the whole request header map (what the filter does once)
//!   `set_headers`  write x-split-cluster: stable and x-split-variant: stable
//!   `clear_route`  call the foreign function clear_route_cache

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Calls {
    get_headers: bool,
    set_headers: bool,
    clear_route: bool,
}

#[derive(Default)]
struct NoopRoot {
    calls: Option<Calls>,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        let mut calls = Calls::default();
        for call in config.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match call {
                "get_headers" => calls.get_headers = true,
                "set_headers" => calls.set_headers = true,
                "clear_route" => calls.clear_route = true,
                other => {
                    log::error!("wasm-noop: unknown call {other:?}");
                    return false;
                }
            }
        }
        self.calls = (calls.get_headers || calls.set_headers || calls.clear_route).then_some(calls);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.calls {
            None => Some(Box::new(NoopStream)),
            Some(calls) => Some(Box::new(ProbeStream(calls))),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopStream;

impl Context for NoopStream {}

impl HttpContext for NoopStream {}

struct ProbeStream(Calls);

impl Context for ProbeStream {}

impl HttpContext for ProbeStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let calls = self.0;
        if calls.get_headers {
            let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
            std::hint::black_box(headers);
        }
        if calls.set_headers {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-split-cluster",
                Some("stable"),
            );
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-split-variant",
                Some("stable"),
            );
        }
        if calls.clear_route {
            let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        }
        Action::Continue
    }
}
