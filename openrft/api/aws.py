"""The server's AWS side for the Bedrock-compatible API (docs/aws.md, "S3" and "Lambda ARNs"):
`s3://` data read into uploads, job outputs written to `outputDataConfig.s3Uri`, and Lambda
ARNs resolved to graders. `openrft server --s3-endpoint-url/--lambda/--lambda-endpoint-url`
fill an AwsSettings; `attach` gives an app its AwsBridge, started and closed with the app.

    app = create_app(data_dir)
    attach(app, AwsSettings(s3_endpoint_url="http://127.0.0.1:9000",
                            lambdas={"grade": "lambda_function.py"}))

Without a bridge (or with empty settings) `s3://` URIs and Lambda ARNs are refused at Create
with a ValidationException saying how to configure them; output URIs are then kept and echoed
with no effect, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from fastapi import FastAPI, Request

from openrft.api.bedrock_lambda import ROUTE, LambdaFunctions
from openrft.api.bedrock_outputs import OUTPUT, OutputWriter, settle_unwritable
from openrft.api.bedrock_shapes import INPUTS
from openrft.api.s3 import FAILURES, S3, S3Error, S3Uri, describe
from openrft.config import config_from_dict
from openrft.errors import ConfigError
from openrft.jobs.model import FileRecord, Job
from openrft.jobs.service import JobService

DATA_FIELDS = (
    ("train_file", "trainingDataConfig.s3Uri"),
    ("validation_file", "validationDataConfig.validators[0].s3Uri"),
)
NOT_CONFIGURED = (
    "S3 is not configured on this server (start it with --s3-endpoint-url URL, or "
    "--s3-endpoint-url aws for Amazon S3): upload the file (POST /api/files) and pass "
    "file-<id>, or give a path on the server"
)


@dataclass(frozen=True)
class AwsSettings:
    s3_endpoint_url: str | None = None  # an S3-compatible endpoint, or "aws"
    lambda_endpoint_url: str | None = None  # a Lambda-compatible endpoint, or "aws"
    lambdas: Mapping[str, str] = field(default_factory=dict)  # function name -> handler file


@dataclass(frozen=True)
class Prepared:
    """What Create takes from the AWS side: the grader spec and the job's extra keys."""

    grader_spec: dict[str, Any] | None
    extra: dict[str, Any]


class AwsBridge:
    def __init__(self, settings: AwsSettings | None = None):
        self.settings = settings or AwsSettings()
        endpoint = self.settings.s3_endpoint_url
        self.s3 = S3(endpoint) if endpoint else None
        self.functions = LambdaFunctions(self.settings.lambdas, self.settings.lambda_endpoint_url)
        self.writer: OutputWriter | None = None

    def start(self, service: JobService) -> None:
        """Host the Lambda functions, point the jobs' graders at them, watch for outputs."""
        self.functions.start()
        self.functions.refresh(service)
        if self.s3 is None:
            settle_unwritable(service)
            return
        self.writer = OutputWriter(self.s3, service, service.runner.poll_s)
        self.writer.start()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.functions.close()

    # -- Create ----------------------------------------------------------------------------

    def prepare(
        self, service: JobService, raw: dict[str, Any], body: dict[str, Any], arn: str | None
    ) -> Prepared:
        """Resolve a Create request's Lambda ARN and s3:// URIs; the data files are read into
        uploads last, once everything else has been checked. `raw["data"]` then names them."""
        extra: dict[str, Any] = {}
        spec = None
        if arn is not None:
            route = self.functions.route(arn)
            spec, extra[ROUTE] = self.functions.grader_spec(route), route
        data = raw["data"]
        remote = [(key, where) for key, where in DATA_FIELDS if _is_s3(data.get(key))]
        if remote and self.s3 is None:
            raise ConfigError(remote[0][1], NOT_CONFIGURED)
        output = self._output(body)
        if output is not None:
            extra[OUTPUT] = output
        if remote:
            config_from_dict(copy.deepcopy(raw))  # a bad member fails before any download
            inputs = {}
            for key, where in remote:
                uri = data[key]
                record, path = self._download(service, uri, where)
                data[key] = record.id
                inputs[path] = uri
            extra[INPUTS] = inputs
        return Prepared(spec, extra)

    def created(self, job: Job) -> None:
        if self.writer is not None and OUTPUT in job.extra:
            self.writer.watch(job.id)

    def _output(self, body: dict[str, Any]) -> str | None:
        """The S3 output URI, its bucket checked; None when outputs stay on the server."""
        uri = (body.get("outputDataConfig") or {}).get("s3Uri")
        if self.s3 is None or not _is_s3(uri):
            return None
        where = "outputDataConfig.s3Uri"
        try:
            self.s3.check_bucket(_parse(uri, where))
        except S3Error as exc:
            raise ConfigError(where, str(exc)) from exc
        return uri

    def _download(self, service: JobService, uri: str, where: str) -> tuple[FileRecord, str]:
        """The object as an upload (DATA_DIR/files/<id>/<name>), and its server path."""
        assert self.s3 is not None
        location = _parse(uri, where)
        try:
            with contextlib.closing(self.s3.open(location)) as body:
                name = PurePosixPath(location.key).name
                record = service.save_upload(name, body, "fine-tune")
        except S3Error as exc:
            raise ConfigError(where, str(exc)) from exc
        except FAILURES as exc:  # the connection broke while reading
            raise ConfigError(where, f"cannot read {uri}: {describe(exc)}") from exc
        return record, str(service.file_path(record.id))


def _is_s3(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def _parse(uri: str, where: str) -> S3Uri:
    try:
        return S3Uri.parse(uri)
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from exc


@functools.cache
def _unconfigured() -> AwsBridge:
    return AwsBridge()


def aws_of(request: Request) -> AwsBridge:
    """The app's bridge; an unconfigured one (which refuses AWS locations) if it has none."""
    return getattr(request.app.state, "aws", None) or _unconfigured()


def attach(app: FastAPI, settings: AwsSettings) -> AwsBridge:
    """Give `app` a bridge, started before the app's own startup (so queued jobs find their
    Lambda host) and closed after its shutdown. Handler files are loaded now: a bad one
    raises here, before the server listens."""
    bridge = AwsBridge(settings)
    app.state.aws = bridge
    inner = app.router.lifespan_context
    service: JobService = app.state.service

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        await asyncio.to_thread(bridge.start, service)
        try:
            async with inner(app) as state:
                yield state
        finally:
            await asyncio.to_thread(bridge.close)

    app.router.lifespan_context = lifespan
    return bridge
