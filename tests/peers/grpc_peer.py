"""A real gRPC server and client (grpcio) for the gateway's gRPC backend
tests.

    grpc_peer.py serve HOST:PORT [CERT KEY]
        HTTP/2 gRPC server with service zt.Echo, no .proto needed (raw
        bytes in and out): Say (unary), Count (server streaming), Fail
        (answers NOT_FOUND with a message: carried in trailers). Plaintext
        (h2c), or with CERT and KEY over TLS (HTTP/2 chosen by ALPN).
        Prints "ready" once it listens.

    grpc_peer.py call HOST:PORT CA_FILE SERVER_NAME
        Calls the three methods over TLS (CA_FILE as the only root,
        SERVER_NAME for SNI and verification) and prints one JSON object.
"""

import json
import sys
from concurrent import futures

import grpc


def serve(addr, cert=None, key=None):
    def say(request, context):
        agent = dict(context.invocation_metadata()).get("user-agent", "")
        return b"echo:" + request + b" (grpc client: " + agent.split(" ")[0].encode() + b")"

    def count(request, context):
        for i in range(int(request)):
            yield str(i).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    handler = grpc.method_handlers_generic_handler(
        "zt.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            server.add_secure_port(addr, grpc.ssl_server_credentials([(k.read(), c.read())]))
    else:
        server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(addr, ca_file, server_name):
    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name)]
    out = {}
    with grpc.secure_channel(addr, creds, options=options) as ch:
        out["say"] = ch.unary_unary("/zt.Echo/Say")(b"hello", timeout=10).decode()
        out["count"] = [m.decode() for m in ch.unary_stream("/zt.Echo/Count")(b"5", timeout=10)]
        try:
            ch.unary_unary("/zt.Echo/Fail")(b"x", timeout=10)
            out["fail"] = "succeeded"
        except grpc.RpcError as e:
            out["fail"] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4])
