"""Running the job service: `serve()` (what `openrft server` calls) and `ServerThread` (the
same server in a background thread, for embedding and tests).

`serve` binds the socket first (so `--port 0` works and the URL is known), writes
DATA_DIR/server.json for the CLI client, prints the dashboard URL with `#token=...`, and
runs uvicorn until SIGTERM or Ctrl-C; then the runner SIGTERMs the workers (they checkpoint
and their jobs resume on the next start) and server.json is removed. The app's AWS side (S3,
Lambda functions: openrft.api.aws) starts and stops with it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from openrft.api.app import create_app
from openrft.api.aws import AwsSettings, attach
from openrft.api.sigv4 import DEFAULT_ACCESS_KEY_ID
from openrft.api.uploads import DEFAULT_MAX_UPLOAD_MB
from openrft.jobs.model import JobError
from openrft.jobs.service import DataDir, default_data_dir
from openrft.net import listen_socket

GRACEFUL_SHUTDOWN_S = 3  # open streams (SSE) get this long before the app shuts down


def bind(host: str, port: int) -> socket.socket:
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        raise JobError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def server_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = "[::1]" if shown == "::" else f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server with a hook run after shutdown: uvicorn re-raises the SIGTERM or
    SIGINT it caught once `run` ends, so code after `run` may never execute."""

    on_exit: Callable[[], None] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.on_exit is not None:
                self.on_exit()


def make_server(app: FastAPI, log_level: str = "info") -> Server:
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = Server(config)
    app.state.server = server  # streams end when server.should_exit is set
    return server


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: Path | None = None,
    concurrency: int = 1,
    aws_access_key_id: str = DEFAULT_ACCESS_KEY_ID,
    aws: AwsSettings | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
) -> None:
    """`aws`: the S3 endpoint and Lambda functions of the Bedrock-compatible API;
    `max_upload_mb`: larger uploads are refused with 413."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    layout = DataDir(Path(data_dir or default_data_dir()).expanduser().resolve())
    sock = bind(host, port)
    url = server_url(host, sock.getsockname()[1])
    app = create_app(
        layout.root, concurrency, aws_access_key_id=aws_access_key_id, max_upload_mb=max_upload_mb
    )
    aws = aws or AwsSettings()
    attach(app, aws)
    server = make_server(app)
    server.on_exit = lambda: remove_server_json(layout)
    write_server_json(layout, url)
    print(f"openrft server: {url}  (data: {layout.root}, concurrency {concurrency})", flush=True)
    print_aws(aws)
    print(f"dashboard: {url}/#token={app.state.token}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        remove_server_json(layout)


def print_aws(settings: AwsSettings) -> None:
    if settings.s3_endpoint_url:
        print(f"s3:// data and outputs through {settings.s3_endpoint_url}", flush=True)
    for name, reference in settings.lambdas.items():
        print(f"Lambda function {name}: {reference}", flush=True)
    if settings.lambda_endpoint_url:
        print(f"other Lambda ARNs invoked at {settings.lambda_endpoint_url}", flush=True)


def write_server_json(layout: DataDir, url: str) -> None:
    record = {"url": url, "pid": os.getpid(), "started_at": time.time()}
    tmp = layout.server_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, layout.server_json)


def remove_server_json(layout: DataDir) -> None:
    try:
        if json.loads(layout.server_json.read_text()).get("pid") == os.getpid():
            layout.server_json.unlink()
    except (OSError, ValueError):
        pass


class ServerThread:
    """The app served by uvicorn in a daemon thread on HOST:PORT (0 = a free port).

    with ServerThread(create_app(tmp_path)) as server:
        httpx.get(server.url + "/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.sock = bind(host, port)
        self.url = server_url(host, self.sock.getsockname()[1])
        self.server = make_server(app, log_level="warning")
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
