//! Test-only: a proxy-wasm HTTP filter that marks every request it filters and panics on
//! requests carrying `x-panic: 1`. A panic in a Wasm VM aborts it (a trap), exactly like any
//! bug in a real filter would; tests/failure_policy.rs uses it to show what each Envoy
//! `failure_policy` does to the traffic after that.
//!
//! Each filtered response gets `x-filtered-by: <vm>` (the host clock's nanoseconds when this VM
//! started, so a reloaded VM shows a new value) and `x-vm-requests: <n>` (requests this VM
//! has filtered, the current one included).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::cell::Cell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PanicRoot { vm: vm_stamp(), requests: Rc::new(Cell::new(0)) })
    });
}}

fn vm_stamp() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

struct PanicRoot {
    vm: u64,
    requests: Rc<Cell<u64>>,
}

impl Context for PanicRoot {}

impl RootContext for PanicRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        log::info!("panic-module: VM {} started", self.vm);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PanicStream {
            vm: self.vm,
            requests: Rc::clone(&self.requests),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PanicStream {
    vm: u64,
    requests: Rc<Cell<u64>>,
}

impl Context for PanicStream {}

impl HttpContext for PanicStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.requests.set(self.requests.get() + 1);
        let marked = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-panic")
            .ok()
            .flatten()
            .is_some_and(|v| v == "1");
        if marked {
            panic!("panic-module: marked request (x-panic: 1)");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            "x-filtered-by",
            Some(&self.vm.to_string()),
        );
        let _ = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            "x-vm-requests",
            Some(&self.requests.get().to_string()),
        );
        Action::Continue
    }
}
