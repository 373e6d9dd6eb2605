"""The job service's FastAPI app: native (`/api`), Bedrock-compatible
(`/model-customization-jobs`, `/custom-models`) and OpenAI-compatible (`/v1`) routers behind
the admin token or a scoped one (or a SigV4 signature made with the admin token, for AWS
SDKs; a session cookie for the dashboard's GETs: openrft.api.auth), `GET /health` without
one, and the dashboard at `/` when `openrft.dashboard` is installed.

    app = create_app(Path("~/.openrft").expanduser(), concurrency=1)

The scheduler starts with the app (lifespan) and, when the app stops, SIGTERMs the workers so
they checkpoint; their jobs resume on the next start (openrft.jobs.runner).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from openrft.api import agents, auth, bedrock, bedrock_models, native, openai_compat
from openrft.api.auth import ensure_token, require_token
from openrft.api.errors import install_error_handlers
from openrft.api.sigv4 import DEFAULT_ACCESS_KEY_ID
from openrft.api.uploads import DEFAULT_MAX_UPLOAD_MB, UploadLimit
from openrft.auth_limits import DEFAULT_MAX_FAILURES, DEFAULT_WINDOW_S
from openrft.jobs.service import DataDir, JobService

log = logging.getLogger("openrft.api")


def create_app(
    data_dir: Path,
    concurrency: int = 1,
    start_runner: bool = True,
    poll_s: float = 0.5,
    aws_access_key_id: str = DEFAULT_ACCESS_KEY_ID,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    auth_max_failures: int = DEFAULT_MAX_FAILURES,
    auth_window_s: float = DEFAULT_WINDOW_S,
) -> FastAPI:
    """The app over DATA_DIR (created if need be). With `start_runner=False` jobs are stored
    and answered for but never started (for tools and tests of the API alone). AWS SDKs sign
    with `aws_access_key_id` and the token as the secret access key (docs/aws.md). Request
    bodies over `max_upload_mb` are refused with 413 (openrft.api.uploads). A client address
    with `auth_max_failures` failed authentications within `auth_window_s` is answered 429
    for `auth_window_s` (openrft.auth_limits)."""
    layout = DataDir(Path(data_dir).expanduser().resolve())
    service = JobService(layout, concurrency, poll_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_runner:
            service.start()
        try:
            yield
        finally:
            if start_runner:
                await asyncio.to_thread(service.close)

    app = FastAPI(
        title="openrft job service",
        description="Reinforcement fine-tuning jobs: native, Bedrock- and OpenAI-compatible.",
        version="0.1.0",
        lifespan=lifespan,
        # The OpenAPI document is served below behind the token, like every API route; the
        # Swagger pages are left out because they load their scripts from a CDN.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.token = ensure_token(layout.token)
    app.state.aws_access_key_id = aws_access_key_id
    install_error_handlers(app)
    auth.install(app, layout.root, auth_max_failures, auth_window_s)  # /api/session, /api/tokens
    # Every request body, not only uploads: no route reads more than the upload limit.
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * (1 << 20)), paths=None)

    @app.get("/health", tags=["native"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    guarded = [Depends(require_token)]
    for module in (native, bedrock, bedrock_models, openai_compat):
        app.include_router(module.router, dependencies=guarded)
    # External agents: authorized by their rollout ids (taking one needs the admin token or
    # the job's agent token).
    app.include_router(agents.router)

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    def openapi() -> dict:
        return app.openapi()

    mount_dashboard(app)
    return app


def mount_dashboard(app: FastAPI) -> bool:
    """Mount the web dashboard at `/` with `openrft.dashboard.mount(app)`, if it exists."""
    try:
        dashboard = importlib.import_module("openrft.dashboard")
    except ModuleNotFoundError as exc:
        if exc.name not in ("openrft.dashboard", "openrft"):
            raise
        log.info("openrft.dashboard is not installed; serving the APIs without the dashboard")
        return False
    dashboard.mount(app)
    return True
