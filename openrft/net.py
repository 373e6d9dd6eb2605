"""Listening sockets for openrft's HTTP servers (job service, Lambda host, chat server)."""

from __future__ import annotations

import socket


def listen_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket bound to (host, port) and listening (port 0 picks a free one); IPv6 when the
    host has a colon. Raises OSError, closed, when the address cannot be had. Listening before
    uvicorn starts means a client that connects at once waits in the backlog, not refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
