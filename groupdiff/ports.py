"""Free TCP ports on a local address (rendezvous for training ranks, ports for local services)."""
from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports that are free right now on ``host`` (held together while picked, so no
    two are the same)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now on ``host``."""
    return free_ports(1, host)[0]
