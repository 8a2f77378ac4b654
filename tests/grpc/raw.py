"""One gRPC request on a plain HTTP/2 connection (prior knowledge), written frame by frame
with `h2`, so that what the gateway itself answers is seen as sent (no client library
enforcing deadlines of its own). Prints the answer as JSON: status, head fields, the body in
hex, trailers.

Usage: raw.py ADDR PATH BODY_HEX [name=value ...]
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    path, body = sys.argv[2], bytes.fromhex(sys.argv[3])
    extra = [tuple(a.split("=", 1)) for a in sys.argv[4:]]
    s = socket.create_connection((host, int(port)), timeout=15)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", path),
               ("content-type", "application/grpc"), ("te", "trailers")] + extra
    c.send_headers(1, headers, end_stream=not body)
    if body:
        c.send_data(1, body, end_stream=True)
    s.sendall(c.data_to_send())
    out = {"head": {}, "data": "", "trailers": {}, "reset": None}
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                out["head"] = dict(e.headers)
            elif isinstance(e, h2.events.DataReceived):
                out["data"] += e.data.hex()
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.TrailersReceived):
                out["trailers"] = dict(e.headers)
            elif isinstance(e, h2.events.StreamReset):
                out["reset"] = int(e.error_code)
                done = True
            elif isinstance(e, h2.events.StreamEnded):
                done = True
        s.sendall(c.data_to_send())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
