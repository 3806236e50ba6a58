"""A real gRPC server and client for tests/grpc.rs (grpcio, over HTTP/2 cleartext).

  backend.py serve NAME [MODE]  serves /test.Svc/Call on 127.0.0.1 (port printed on stdout);
                                the caller's `x-mode` metadata picks the answer:
                                ok, unavailable (trailers-only: grpc-status in the headers),
                                unavailable-trailers (headers first, grpc-status in trailers),
                                not-found (trailers-only), slow (answers OK after `x-delay` s).
                                Every answer carries `x-backend: NAME` (headers or trailers).
                                With MODE, that answer whatever the caller asks (a stable
                                version that always answers "ok").
  backend.py call ADDR MODE N   N unary calls through ADDR, one JSON line each:
                                {"code": "OK" | "UNAVAILABLE" | ..., "backend": NAME}
"""
import json
import sys
import time
from concurrent import futures

import grpc


def serve(name, fixed_mode=None):
    def call(request, context):
        md = dict(context.invocation_metadata())
        mode = fixed_mode or md.get("x-mode", "ok")
        tag = (("x-backend", name),)
        if mode == "slow":
            time.sleep(float(md.get("x-delay", "0.3")))
        if mode == "unavailable-trailers":
            context.send_initial_metadata(tag)
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        context.set_trailing_metadata(tag)
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        if mode == "not-found":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        context.send_initial_metadata(tag)
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Svc", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Ends when the test closes stdin (or kills it).
    sys.stdin.read()
    server.stop(0)


def client(addr, mode, n):
    # Straight to the address, whatever proxy the environment names.
    # A host name as authority: shadow copies get "<authority>-shadow", which must stay valid.
    options = [("grpc.enable_http_proxy", 0), ("grpc.default_authority", "app.test")]
    with grpc.insecure_channel(addr, options=options) as channel:
        rpc = channel.unary_unary("/test.Svc/Call")
        for _ in range(n):
            metadata = (("x-mode", mode),)
            try:
                _, call = rpc.with_call(b"", metadata=metadata, timeout=5)
                code = "OK"
            except grpc.RpcError as err:
                call = err
                code = err.code().name
            backend = ""
            for key, value in list(call.initial_metadata() or ()) + list(call.trailing_metadata() or ()):
                if key == "x-backend":
                    backend = value
            print(json.dumps({"code": code, "backend": backend}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
