"""Listening sockets for openrft's HTTP servers (job service, Lambda host, chat server), and
the one retry loop of its blocking HTTP clients (tool endpoints, remote environments)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx


def listen_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket bound to (host, port) and listening (port 0 picks a free one); IPv6 when the
    host has a colon. Raises OSError, closed, when the address cannot be had. Listening before
    uvicorn starts means a client that connects at once waits in the backlog, not refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: a response written in two parts (headers, body) is not
    # held back by Nagle until the client's delayed ACK, 40 ms on every keep-alive request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class EndpointFailure(Exception):
    """An HTTP endpoint gave no usable answer. `kind`: "timeout" (no answer in time; not
    retried, the server may still be working), "unreachable" or "server_error" (after every
    try), or "client_error" (a 4xx answer: retrying would not help)."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


def request_with_retries(
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float,
    attempts: int = 3,
    backoff_s: float = 0.5,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """One request, tried up to `attempts` times on a refused connection, a 5xx or a 429,
    waiting `backoff_s` before the second try and twice as long before each later one. A 2xx
    or 3xx answer is returned; everything else raises EndpointFailure."""
    send = client.request if client is not None else httpx.request
    wait, problem, kind = backoff_s, "", "unreachable"
    for attempt in range(attempts):
        if attempt:
            time.sleep(wait)
            wait *= 2
        try:
            response = send(method, url, json=json, headers=dict(headers or {}), timeout=timeout_s)
        except httpx.TimeoutException as error:
            raise EndpointFailure("timeout", f"{url} did not answer in {timeout_s:g} s") from error
        except httpx.HTTPError as error:
            problem, kind = f"{url}: {error!r}", "unreachable"
            continue
        if response.status_code >= 500 or response.status_code == 429:
            problem = f"{url} answered {response.status_code}: {response.text[:300]}"
            kind = "server_error"
            continue
        if response.status_code >= 400:
            raise EndpointFailure(
                "client_error",
                f"{url} answered {response.status_code}: {response.text[:500]}",
                response.status_code,
            )
        return response
    tries = f" ({attempts} tries)" if attempts > 1 else ""
    raise EndpointFailure(kind, problem + tries)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@contextlib.contextmanager
def background(
    app: Any, host: str = "127.0.0.1", port: int = 0, configure_logging: bool = True
) -> Iterator[str]:
    """Runs an ASGI `app` with uvicorn in a daemon thread; yields its base URL; stops it on
    exit (for tests and in-process hosts). `configure_logging=False` leaves the process's
    `uvicorn.*` loggers alone (a host inside a server that logs with them)."""
    import uvicorn  # only the hosts need it

    class Config(uvicorn.Config):
        def configure_logging(self) -> None:
            if configure_logging:
                super().configure_logging()

    sock = listen_socket(host, port)
    config = Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {url_of(sock)}")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
