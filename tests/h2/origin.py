#!/usr/bin/env python3
"""An HTTP/2 origin for the gateway's end-to-end tests (h2c with prior knowledge, or TLS with
ALPN h2 when given a certificate). Every answer is 200 with a body naming the method, path and
body length it got, the connection it came on (`x-conn`), and the trailer `x-checksum`.
Prints `listening on PORT`, then serves until killed. 127.0.0.1 only.

Usage: origin.py [CERT KEY]
"""
import socket
import ssl
import sys
import threading

import h2.config
import h2.connection
import h2.events

count = 0
lock = threading.Lock()


def serve(sock, number):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests = {}
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                requests[e.stream_id] = [dict(e.headers), 0]
            elif isinstance(e, h2.events.DataReceived):
                requests[e.stream_id][1] += len(e.data)
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                headers, n = requests.pop(e.stream_id)
                body = f"{headers[':method']} {headers[':path']} {n} bytes via h2".encode()
                conn.send_headers(e.stream_id, [(":status", "200"), ("x-conn", str(number)),
                                                ("x-scheme", headers.get(":scheme", ""))])
                conn.send_data(e.stream_id, body)
                conn.send_headers(e.stream_id, [("x-checksum", str(sum(body)))], end_stream=True)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def main():
    global count
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    tls = None
    if len(sys.argv) == 3:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[1], sys.argv[2])
        tls.set_alpn_protocols(["h2"])
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        if tls:
            try:
                sock = tls.wrap_socket(sock, server_side=True)
            except OSError:
                continue
        with lock:
            count += 1
            number = count
        threading.Thread(target=serve, args=(sock, number), daemon=True).start()


if __name__ == "__main__":
    main()
