"""The web dashboard: a static single-page UI (plain JS modules, CSS, SVG charts) served by
the job service. `mount(app)` serves `index.html` at `/` and the assets under `/ui/`; the page
talks to the native `/api` with the bearer token it keeps in the browser's local storage.

Nothing is fetched from outside the server: every script, style sheet and chart is in
`static/`. The page is served with a strict Content-Security-Policy (scripts and styles from
this origin only), so even a rendering bug cannot run injected inline script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
# Revalidate on every load (ETag / Last-Modified), so an upgraded server never runs stale JS.
NO_CACHE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    """StaticFiles that asks the browser to revalidate each asset."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(NO_CACHE)
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard: `GET /` is the page, `/ui/...` its JS and CSS."""

    @app.get("/", include_in_schema=False)
    def dashboard_index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={**NO_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
        )

    app.mount("/ui", _Assets(directory=STATIC_DIR), name="dashboard-assets")
