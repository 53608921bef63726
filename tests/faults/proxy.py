"""A TCP proxy on 127.0.0.1 that trips at a chosen request: the fault suite's way to stop a real server at an
exact point of a client's conversation with it (the 2nd part of a multipart upload, the alias write of a
promotion) without touching the client's code.

The client is pointed at the proxy; the proxy copies bytes both ways. When the client's bytes match
``pattern`` (a regex over the request stream), the proxy holds those bytes back, calls ``trip()`` once (the
test stops the server there), closes every connection and stops listening, so the client sees exactly what a
stopped server gives: refused connections. :meth:`heal` listens again on the same port and forwards
everything from then on (it trips once).
"""
from __future__ import annotations

import re
import socket
import threading
from typing import Callable

CHUNK = 1 << 16
WINDOW = 4096  # bytes of the client stream kept to match a pattern that spans two reads


class TripProxy:
    """Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; trip on ``pattern`` (see the module doc)."""

    def __init__(self, target_port: int, pattern: bytes, trip: Callable[[], None]):
        self.target, self.pattern, self.trip = target_port, re.compile(pattern), trip
        self.tripped, self.armed = threading.Event(), True
        self.trip_time: float | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._start_accepting()

    def _start_accepting(self) -> None:
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # closed: tripped or shut down
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self.tripped.is_set():
                client.close()
                upstream.close()
                return
            self._conns.update((client, upstream))
        threading.Thread(target=self._copy, args=(upstream, client, False), daemon=True).start()
        self._copy(client, upstream, True)

    def _copy(self, source: socket.socket, dest: socket.socket, watch: bool) -> None:
        window = b""
        try:
            while data := source.recv(CHUNK):
                if watch and self.armed:
                    window = (window + data)[-(WINDOW + len(data)):]
                    if self.pattern.search(window):
                        self._trip()
                        return
                dest.sendall(data)
            dest.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            if watch and self.tripped.is_set():
                for sock in (source, dest):
                    sock.close()

    def _trip(self) -> None:
        import time

        with self._lock:
            if self.tripped.is_set() or not self.armed:
                return
            self.tripped.set()
            self.armed = False
            self.trip_time = time.monotonic()
            self._server.close()  # new connections are refused from now on
        self.trip()
        with self._lock:
            for sock in self._conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._conns.clear()

    def heal(self) -> None:
        """Listen again on the same port and forward everything (the server is back); it does not trip again."""
        with self._lock:
            self._server = socket.create_server(("127.0.0.1", self.port))
            self.tripped.clear()
        self._start_accepting()

    def close(self) -> None:
        with self._lock:
            self._server.close()
            for sock in self._conns:
                sock.close()
            self._conns.clear()
