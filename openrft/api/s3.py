"""S3 for the Bedrock-compatible API: `s3://bucket/key` URIs, and the one boto3 client the
server reads data and writes job outputs with (docs/aws.md, "S3").

The endpoint is Amazon S3 (`aws`) or any S3-compatible store (MinIO, LocalStack, moto), as
`openrft server --s3-endpoint-url` says. Credentials and region come from boto3's default
chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION, AWS_PROFILE, instance roles).
Every failure is raised as an S3Error whose message names the URI and the cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from openrft.errors import RFTError

AWS = "aws"  # the endpoint value meaning AWS's own endpoints (boto3's default)
DEFAULT_REGION = "us-east-1"  # signs for an S3-compatible store when no region is configured
SCHEME = "s3://"
# What boto3 raises: the store's answers, botocore's own failures (no credentials, no
# connection), and upload_file's wrapper around either.
FAILURES = (BotoCoreError, ClientError, Boto3Error)


class S3Error(RFTError):
    """An S3 call failed; the message names the URI and what the store answered."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # "" for the bucket's top

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """`s3://bucket/key`; ValueError saying what is wrong otherwise."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len(SCHEME) :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} names no bucket")
        return cls(bucket, key)

    def under(self, *parts: str) -> S3Uri:
        """The key `parts` joined under this one, as under a folder."""
        prefix = self.key.rstrip("/")
        return S3Uri(self.bucket, "/".join(p for p in (prefix, *parts) if p))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def describe(exc: Exception) -> str:
    """What the store (or botocore, before any answer) said, in one line."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or exc.response["ResponseMetadata"].get("HTTPStatusCode")
        return f"{code}: {error.get('Message') or exc}"
    return str(exc)


class S3:
    """The server's S3 client: reads data files and writes outputs."""

    def __init__(self, endpoint_url: str):
        session = boto3.session.Session()
        custom = endpoint_url != AWS
        # Most S3-compatible stores serve buckets as paths, not as host names (which would
        # need DNS for each bucket); AWS itself takes boto3's default.
        style = {"addressing_style": "path"} if custom else {}
        self.endpoint_url = endpoint_url
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url if custom else None,
            region_name=session.region_name or DEFAULT_REGION,
            config=Config(s3=style, retries={"mode": "standard"}),
        )

    def open(self, uri: S3Uri) -> BinaryIO:
        """The object's body as a stream (read it to the end, then close it)."""
        if not uri.key or uri.key.endswith("/"):
            raise S3Error(f"{uri} names a folder; give the data file's key")
        try:
            return self.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
        except FAILURES as exc:
            raise S3Error(f"cannot read {uri}: {describe(exc)}") from exc

    def check_bucket(self, uri: S3Uri) -> None:
        """Fails now, rather than when the job ends, if the bucket cannot be reached."""
        try:
            self.client.head_bucket(Bucket=uri.bucket)
        except FAILURES as exc:
            raise S3Error(f"cannot reach the bucket of {uri}: {describe(exc)}") from exc

    def put_file(self, path: Path, uri: S3Uri) -> None:
        try:
            self.client.upload_file(str(path), uri.bucket, uri.key)
        except FAILURES as exc:
            raise S3Error(f"cannot write {uri}: {describe(exc)}") from exc

    def put_bytes(self, data: bytes, uri: S3Uri) -> None:
        try:
            self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=data)
        except FAILURES as exc:
            raise S3Error(f"cannot write {uri}: {describe(exc)}") from exc
