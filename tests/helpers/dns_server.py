"""A tiny authoritative DNS server on 127.0.0.1 (UDP, the real wire format) answering TXT questions.

Tests point the control plane at it with `WB_DOMAIN_RESOLVER=dns:127.0.0.1:PORT` and set
records in `records` (name -> list of TXT strings) while it runs. Unknown names get NXDOMAIN.
"""

from __future__ import annotations

import socket
import struct
import threading


class TxtServer:
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.questions: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "TxtServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(msg), peer)
            except Exception:  # noqa: BLE001 - a malformed question gets no answer
                continue

    def answer(self, msg: bytes) -> bytes:
        qid, flags, qd = struct.unpack(">HHH", msg[:6])
        i, labels = 12, []
        while msg[i]:
            labels.append(msg[i + 1:i + 1 + msg[i]].decode("ascii"))
            i += 1 + msg[i]
        question = msg[12:i + 5]
        qtype = struct.unpack(">H", msg[i + 1:i + 3])[0]
        name = ".".join(labels).lower()
        self.questions.append(name)
        values = self.records.get(name)
        rcode = 0 if values is not None else 3
        answers = b""
        for v in (values or []) if qtype == 16 else []:
            raw = v.encode()
            rdata = b"".join(bytes([len(raw[j:j + 255])]) + raw[j:j + 255] for j in range(0, max(len(raw), 1), 255))
            answers += struct.pack(">HHHIH", 0xC00C, 16, 1, 60, len(rdata)) + rdata
        n = len(values or []) if qtype == 16 else 0
        header = struct.pack(">HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, n, 0, 0)
        return header + question + answers
