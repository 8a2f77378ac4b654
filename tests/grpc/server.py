"""A gRPC origin for the tests: the demo.v1.Echo service of protos/demo/v1/echo.proto on
grpcio, and grpc.health.v1.Health. Messages are built from the descriptor set compiled at
start (no generated code). Prints "listening PORT", and the descriptor set's path.

Usage: server.py [--health-status SERVING|NOT_SERVING]
"""
import os
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HERE = os.path.dirname(os.path.abspath(__file__))
BUILTIN = os.path.join(HERE, "..", "..", "proxy", "src", "grpc", "protos")


def compile_protos(out):
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", "-I" + os.path.join(HERE, "protos"), "-I" + BUILTIN, "-I" + wkt,
                      "--include_imports", "--descriptor_set_out=" + out, "demo/v1/echo.proto"])
    assert rc == 0, "protoc failed"
    fds = descriptor_pb2.FileDescriptorSet()
    with open(out, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return pool


def main():
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), "echo-%d.pb" % os.getpid())
    pool = compile_protos(out)
    M = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    Item, GetRequest, CreateRequest = M("demo.v1.Item"), M("demo.v1.GetRequest"), M("demo.v1.CreateRequest")
    ListRequest, FailRequest, SlowRequest = M("demo.v1.ListRequest"), M("demo.v1.FailRequest"), M("demo.v1.SlowRequest")
    Summary, ErrorDetail, Empty = M("demo.v1.Summary"), M("demo.v1.ErrorDetail"), M("google.protobuf.Empty")
    health = {"status": 1}
    calls = {"n": 0, "cancelled": 0}

    def md(context):
        return {k: v for k, v in context.invocation_metadata()}

    def echo_metadata(context):
        m = md(context)
        sent = [("x-echo-" + k[len("x-meta-"):], v) for k, v in m.items() if k.startswith("x-meta-")]
        context.send_initial_metadata(tuple(sent) + (("x-served-by", "echo"),))
        context.set_trailing_metadata((("x-trailer", "done"),))
        return m

    def get(req, context):
        calls["n"] += 1
        m = echo_metadata(context)
        it = Item(id=req.id, shelf=req.shelf, title="title of " + req.id, copies=req.limit or 3,
                  kind=1, tags=list(req.fields) or ["a", "b"], display_name="shown",
                  attrs={"verbose": str(req.verbose).lower(), "auth": m.get("authorization", "")})
        it.added.FromSeconds(1700000000)
        return it

    def create(req, context):
        calls["n"] += 1
        echo_metadata(context)
        it = Item()
        it.CopyFrom(req.item)
        it.shelf = req.shelf
        it.id = it.id or "new-" + req.request_id
        return it

    def update(req, context):
        echo_metadata(context)
        it = Item()
        it.CopyFrom(req)
        it.title = it.title + " (updated)"
        return it

    def list_items(req, context):
        echo_metadata(context)
        for i in range(req.count):
            yield Item(id="%s-%d" % (req.shelf, i), shelf=req.shelf, copies=i)

    def fail(req, context):
        detail = ErrorDetail(reason="REQUESTED", field="code").SerializeToString()
        # google.rpc.Status {code, message, details: [Any{type_url, value}]} written by hand.
        any_msg = _ld(1, b"type.googleapis.com/demo.v1.ErrorDetail") + _ld(2, detail)
        status = _varint_field(1, req.code) + _ld(2, "failed on purpose: é".encode()) + _ld(3, any_msg)
        context.set_trailing_metadata((("grpc-status-details-bin", status), ("x-trailer", "failed")))
        context.abort(grpc.StatusCode[_code(req.code)], "failed on purpose: é")

    def slow(req, context):
        end = time.time() + req.millis / 1000.0
        while time.time() < end:
            if not context.is_active():
                calls["cancelled"] += 1
                return Item()
            time.sleep(0.01)
        return Item(id="slow")

    def ping(req, context):
        return Empty()

    def collect(it, context):
        s = Summary()
        for item in it:
            s.count += 1
            s.copies += item.copies
            s.ids.append(item.id)
        return s

    def chat(it, context):
        for item in it:
            if item.id == "cancelled?":
                yield Item(id="cancelled:%d" % calls["cancelled"], copies=calls["n"])
                continue
            yield Item(id="re:" + item.id, copies=item.copies * 2)

    def check(raw, context):
        return b"\x08" + bytes([health["status"]])

    def set_health(raw, context):
        health["status"] = raw[1] if len(raw) > 1 else 1
        return b""

    def u(f, req, resp):
        return grpc.unary_unary_rpc_method_handler(f, request_deserializer=req.FromString,
                                                   response_serializer=resp.SerializeToString)

    echo = {
        "Get": u(get, GetRequest, Item),
        "Create": u(create, CreateRequest, Item),
        "Update": u(update, Item, Item),
        "List": grpc.unary_stream_rpc_method_handler(list_items, request_deserializer=ListRequest.FromString,
                                                      response_serializer=Item.SerializeToString),
        "Fail": u(fail, FailRequest, Item),
        "Slow": u(slow, SlowRequest, Item),
        "Ping": u(ping, Empty, Empty),
        "Collect": grpc.stream_unary_rpc_method_handler(collect, request_deserializer=Item.FromString,
                                                         response_serializer=Summary.SerializeToString),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, request_deserializer=Item.FromString,
                                                       response_serializer=Item.SerializeToString),
    }
    raw = lambda f: grpc.unary_unary_rpc_method_handler(f)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("demo.v1.Echo", echo),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": raw(check)}),
        grpc.method_handlers_generic_handler("test.Control", {"SetHealth": raw(set_health)}),
    ))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("descriptors %s" % out, flush=True)
    print("listening %d" % port, flush=True)
    threading.Event().wait()


def _varint(n):
    out = b""
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _varint_field(num, n):
    return _varint(num << 3) + _varint(n)


def _ld(num, data):
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c.name
    return "UNKNOWN"


if __name__ == "__main__":
    main()
