"""External agents through the job server (`env.agent = "external"` jobs):
`/api/jobs/{job_id}/agent/v1/...` forwards to the running job's agent proxy
(openrft.rollout.agent_proxy), so agents on other machines need only the server's address.

- `POST .../agent/v1/rollouts` takes a rollout: it needs the server's admin token, or an
  `agent` token made for this job (openrft.api.tokens: `openrft server token create --agent
  --job ID`), which may call nothing else; the answer's `base_url` points back here.
- `POST .../agent/v1/chat/completions` (streaming or not), `GET .../agent/v1/models` and
  `POST .../agent/v1/rollouts/{rollout_id}/reward` are authorized by the rollout id (the
  API key the rollout hands out, or `X-Rollout-Id`), which the proxy checks: an agent never
  holds the server's token.

A job that is not running, or not an external-agent job, answers 409.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from openrft.api.auth import require_token
from openrft.api.views import service_of
from openrft.jobs.model import JobError
from openrft.paths import AGENT_FILE

router = APIRouter(prefix="/api/jobs/{job_id}/agent", tags=["agents"])
FORWARDED = ("authorization", "content-type", "x-rollout-id", "accept")


class NotAcceptingAgents(JobError):
    status = 409


@router.api_route("/v1/{path:path}", methods=["GET", "POST"])
async def forward(request: Request, job_id: str, path: str) -> Response:
    service = service_of(request)
    job = service.store.get_job(job_id)  # 404 for an unknown job
    try:
        target = json.loads((service.run_dir(job_id) / AGENT_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError) as error:
        raise NotAcceptingAgents(
            f"job {job_id} ({job.status}) is not taking external agents now: it is not "
            "running, or its config has no env.agent = 'external'"
        ) from error
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
    taking = path == "rollouts" and request.method == "POST"
    if taking:
        # Handing out work is the server's owner's call, or the job's agent token's.
        await require_token(request)
        headers.pop("authorization", None)
    client = httpx.AsyncClient(timeout=None)
    upstream = await client.send(
        client.build_request(
            request.method, target + path, headers=headers, content=await request.body()
        ),
        stream=True,
    )
    kind = upstream.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):

        async def relay() -> Any:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), upstream.status_code, media_type=kind)
    body = await upstream.aread()
    await upstream.aclose()
    await client.aclose()
    if taking and upstream.status_code == 200:
        offer = json.loads(body)
        offer["base_url"] = f"{str(request.base_url).rstrip('/')}/api/jobs/{job_id}/agent/v1/"
        return Response(json.dumps(offer), 200, media_type="application/json")
    return Response(body, upstream.status_code, media_type=kind or None)
