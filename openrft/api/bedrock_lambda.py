"""Lambda function ARNs as graders (`graderConfig.lambdaGrader.lambdaArn`, docs/aws.md).

`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]` names either

- a handler registered with the server (`openrft server --lambda NAME=lambda_function.py`),
  hosted as `openrft grader serve` hosts one (openrft.rewards.lambda_host), or
- with `--lambda-endpoint-url`, a function of AWS Lambda (or a Lambda-compatible endpoint),
  called through its Invoke API with boto3.

Both are served on one loopback endpoint (the Lambda host) that the job's grader, the
`lambda` grader type, posts Bedrock's reward contract to: `/functions/NAME/invoke` runs the
registered handler, `/aws/ARN` relays the request to Lambda's Invoke and its answer back,
function errors included. The contract stays exact: the handler sees the same event, and the
grader the same answer, as on Bedrock. An ARN that names neither is refused at Create.

A job keeps its route (`Job.extra[ROUTE]`); its grader.json holds the host's URL, which is
rewritten when a server starts (`refresh`), since the host's port is picked anew each time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from openrft.api.s3 import AWS, describe
from openrft.errors import ConfigError
from openrft.jobs.model import JobStatus
from openrft.jobs.service import JobService
from openrft.net import background
from openrft.rewards import lambda_host

log = logging.getLogger(__name__)
FIELD = "customizationConfig.rftConfig.graderConfig.lambdaGrader.lambdaArn"
ROUTE = "lambdaRoute"  # Job.extra: the Lambda host path the job's grader posts to
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # Lambda's rule for function names
ARN = re.compile(
    r"^arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
    r"(?P<name>[A-Za-z0-9_-]{1,64})(?::(?P<qualifier>[A-Za-z0-9$_-]{1,128}))?$"
)
INVOKE_TIMEOUT_S = 900  # Lambda's longest run; the grader's own timeout_s bounds a call


def is_lambda_arn(text: str) -> bool:
    return text.startswith("arn:") and ":lambda:" in text


def parse_registration(text: str) -> tuple[str, str]:
    """`NAME=lambda_function.py` (what `--lambda` takes) as (name, handler reference)."""
    name, sep, reference = text.partition("=")
    if not sep or not reference:
        raise ConfigError("--lambda", f"{text!r} is not NAME=FILE (e.g. grade=lambda_function.py)")
    if not NAME.match(name):
        raise ConfigError("--lambda", f"{name!r} is not a Lambda function name ([A-Za-z0-9_-])")
    return name, reference


@dataclass(frozen=True)
class FunctionArn:
    arn: str
    region: str
    name: str

    @classmethod
    def parse(cls, arn: str) -> FunctionArn:
        match = ARN.match(arn)
        if match is None:
            message = f"{arn!r} is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:"
            raise ConfigError(FIELD, message + "function:NAME)")
        return cls(arn, match["region"], match["name"])


class LambdaInvoker:
    """AWS Lambda's GetFunction and Invoke, through boto3 (credentials: its default chain)."""

    def __init__(self, endpoint_url: str):
        self.endpoint_url = None if endpoint_url == AWS else endpoint_url
        # One attempt: the grader retries (with its back-off) what is worth retrying.
        self.config = Config(
            read_timeout=INVOKE_TIMEOUT_S, connect_timeout=10, retries={"total_max_attempts": 1}
        )
        self._clients: dict[str, Any] = {}

    def _client(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = boto3.session.Session().client(
                "lambda", endpoint_url=self.endpoint_url, region_name=region, config=self.config
            )
        return self._clients[region]

    def check(self, function: FunctionArn) -> None:
        """ConfigError naming the ARN unless Lambda knows the function."""
        try:
            self._client(function.region).get_function(FunctionName=function.arn)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise ConfigError(FIELD, f"AWS Lambda has no function {function.arn}") from exc
            # Allowed to invoke but not to look the function up: the first grading call tells.
            log.warning("cannot look up %s: %s; trying it anyway", function.arn, describe(exc))
        except BotoCoreError as exc:
            raise ConfigError(FIELD, f"cannot reach AWS Lambda for {function.arn}: {exc}") from exc

    def invoke(self, function: FunctionArn, payload: bytes) -> Response:
        """Lambda's answer as the host gives it: the function's result (HTTP 200), its error
        object (HTTP 500, as a failed handler answers), or Lambda's own error."""
        try:
            answer = self._client(function.region).invoke(
                FunctionName=function.arn, InvocationType="RequestResponse", Payload=payload
            )
        except ClientError as exc:
            status = exc.response["ResponseMetadata"].get("HTTPStatusCode") or 502
            error = exc.response.get("Error", {})
            body = {"errorMessage": describe(exc), "errorType": error.get("Code", "ClientError")}
            return JSONResponse(body, status_code=status)
        except BotoCoreError as exc:  # no answer at all: the grader retries a 502
            return JSONResponse({"errorMessage": str(exc), "errorType": "Unreachable"}, 502)
        status = 500 if answer.get("FunctionError") else 200
        return Response(answer["Payload"].read(), status, media_type="application/json")


def host_app(handlers: Mapping[str, str], invoker: LambdaInvoker | None) -> FastAPI:
    """The Lambda host: each registered handler at /functions/NAME/, AWS Lambda at /aws/."""
    app = FastAPI(title="openrft Lambda host", docs_url=None, redoc_url=None, openapi_url=None)
    for name, reference in handlers.items():
        app.mount(f"/functions/{name}", lambda_host.make_app(reference))
    if invoker is not None:

        async def relay(request: Request, arn: str) -> Response:
            function = FunctionArn.parse(arn)
            return await run_in_threadpool(invoker.invoke, function, await request.body())

        app.add_api_route("/aws/{arn:path}", relay, methods=["POST"])
    return app


@contextlib.contextmanager
def loopback(app: FastAPI) -> Iterator[str]:
    """Serves `app` on a free 127.0.0.1 port in a daemon thread; yields its base URL, no
    trailing slash (uvicorn's logging setup left out: it would reset the levels of the
    process-wide `uvicorn.*` loggers the job server itself logs with)."""
    with background(app, configure_logging=False) as url:
        yield url.rstrip("/")


class LambdaFunctions:
    """The functions a job's lambdaArn may name, and the loopback host that serves them.

    Handlers are loaded here: one that cannot be loaded stops the server from starting."""

    def __init__(self, handlers: Mapping[str, str], endpoint_url: str | None = None):
        self.handlers = dict(handlers)
        self.invoker = LambdaInvoker(endpoint_url) if endpoint_url else None
        self.app = host_app(self.handlers, self.invoker)
        self.url = ""  # the host's base URL once started
        self._stack = contextlib.ExitStack()

    @property
    def hosted(self) -> bool:
        return bool(self.handlers) or self.invoker is not None

    def start(self) -> None:
        if self.hosted:
            self.url = self._stack.enter_context(loopback(self.app))

    def close(self) -> None:
        self._stack.close()

    def route(self, arn: str) -> str:
        """The host path for a lambdaArn; ConfigError naming it when it names no function."""
        function = FunctionArn.parse(arn)
        if function.name in self.handlers:
            return f"/functions/{function.name}/invoke"
        if self.invoker is None:
            registered = ", ".join(sorted(self.handlers)) or "none"
            raise ConfigError(
                FIELD,
                f"{arn} names no Lambda function of this server (registered: {registered}); "
                f"start it with --lambda {function.name}=lambda_function.py, or with "
                "--lambda-endpoint-url to call AWS Lambda",
            )
        self.invoker.check(function)
        return f"/aws/{arn}"

    def grader_spec(self, route: str) -> dict[str, Any]:
        """The job's grader: the `lambda` type, posting to the host."""
        name = route.split("/")[2] if route.startswith("/functions/") else "lambda"
        return {"type": "lambda", "name": name, "url": self.url + route}

    def refresh(self, service: JobService) -> None:
        """Point the grader.json of every job with a Lambda ARN at this host (its port is
        new), so queued and resumed jobs reach it."""
        for job in service.store.list_jobs():
            route = job.extra.get(ROUTE)
            path = service.run_dir(job.id) / "grader.json"
            if not route or job.status is JobStatus.COMPLETED or not path.is_file():
                continue  # a Completed job never runs again
            if self._serves(route):
                path.write_text(json.dumps(self.grader_spec(route), indent=2))
            else:
                message = f"this server does not serve the job's Lambda function ({route})"
                service.store.add_event(job.id, message + "; its grading would fail", "warning")

    def _serves(self, route: str) -> bool:
        if route.startswith("/aws/"):
            return self.invoker is not None
        return route.removeprefix("/functions/").split("/")[0] in self.handlers
