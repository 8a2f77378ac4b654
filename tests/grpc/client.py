"""A gRPC client for the tests (grpcio): runs one scenario against ADDR and prints what came
back as one JSON object.

Usage: client.py ADDR DESCRIPTORS SCENARIO [ARG]
"""
import json
import sys
import threading

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def load(path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def main():
    addr, descriptors, scenario = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else ""
    M = load(descriptors)
    Item, GetRequest, ListRequest = M("demo.v1.Item"), M("demo.v1.GetRequest"), M("demo.v1.ListRequest")
    FailRequest, SlowRequest, Summary = M("demo.v1.FailRequest"), M("demo.v1.SlowRequest"), M("demo.v1.Summary")
    ch = grpc.insecure_channel(addr)
    call = lambda kind, name, req, resp: getattr(ch, kind)("/demo.v1.Echo/" + name, request_serializer=req.SerializeToString,
                                                         response_deserializer=resp.FromString)
    out = {}
    # ARG of a unary call: a metadata field to send (`name=value`).
    meta = [("x-meta-color", "blue")] + ([tuple(arg.split("=", 1))] if "=" in arg else [])
    try:
        if scenario == "unary":
            r, c = call("unary_unary", "Get", GetRequest, Item).with_call(GetRequest(id="7", limit=9), metadata=meta, timeout=10)
            out = {"item": json_format.MessageToDict(r), "initial": dict(c.initial_metadata()),
                   "trailing": dict(c.trailing_metadata()), "code": c.code().name}
        elif scenario == "server_stream":
            items = call("unary_stream", "List", ListRequest, Item)(ListRequest(shelf="s", count=int(arg or 5)), timeout=10)
            out = {"ids": [i.id for i in items]}
        elif scenario == "client_stream":
            gen = (Item(id=str(i), copies=i) for i in range(int(arg or 5)))
            r = call("stream_unary", "Collect", Item, Summary)(gen, timeout=10)
            out = {"count": r.count, "copies": r.copies, "ids": list(r.ids)}
        elif scenario == "bidi":
            # Ping-pong: the next message goes only after the answer to the last one came back,
            # which only works when both directions move at once.
            q, got = [], []
            cond = threading.Condition()
            def gen():
                for i in range(int(arg or 5)):
                    with cond:
                        q.append(i)
                    yield Item(id=str(i), copies=i)
                    with cond:
                        if not cond.wait_for(lambda: len(got) > i, timeout=5):
                            return
            for r in call("stream_stream", "Chat", Item, Item)(gen(), timeout=20):
                with cond:
                    got.append(r.id)
                    cond.notify_all()
            out = {"got": got}
        elif scenario == "fail":
            try:
                call("unary_unary", "Fail", FailRequest, Item)(FailRequest(code=int(arg or 9)), timeout=10)
            except grpc.RpcError as e:
                t = dict(e.trailing_metadata() or ())
                out = {"code": e.code().name, "details": e.details(), "status_bin": t.get("grpc-status-details-bin", b"").hex(),
                       "x-trailer": t.get("x-trailer")}
        elif scenario == "slow":
            r = call("unary_unary", "Slow", SlowRequest, Item)(SlowRequest(millis=int(arg or 100)), timeout=10)
            out = {"id": r.id}
        elif scenario == "cancelled":
            r = list(call("stream_stream", "Chat", Item, Item)(iter([Item(id="cancelled?")]), timeout=10))
            out = {"id": r[0].id}
        else:
            raise SystemExit("unknown scenario " + scenario)
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details(), "trailing": {k: v for k, v in (e.trailing_metadata() or ()) if isinstance(v, str)}}
    if "code" not in out:
        out["code"] = "OK"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
