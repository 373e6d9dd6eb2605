"""AWS Signature Version 4 verification, so boto3 and the AWS CLI work unchanged against the
server: they sign with an access key id and a secret access key, and here the access key id
is the server's (`openrft` unless create_app was given another) and the secret is the
server's token (DATA_DIR/token). docs/aws.md.

The expected signature is computed by botocore's own signer (SigV4Auth) over the request as
received: its method, raw path, query, the headers its SignedHeaders names and its body, at the
time its X-Amz-Date says. Nothing of SigV4 is reimplemented here, so what botocore signs,
this verifies.

    await verify(request, access_key_id="openrft", secret=token)  # SignatureError if not
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from fastapi import Request

from openrft.jobs.model import JobError

ALGORITHM = "AWS4-HMAC-SHA256"
DEFAULT_ACCESS_KEY_ID = "openrft"
MAX_SKEW = timedelta(minutes=15)  # what AWS allows between X-Amz-Date and its own clock
_FIELD = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")


class SignatureError(JobError):
    """A SigV4 request refused; `error_type` is the code AWS answers with (boto3 raises
    ClientError with it as Error.Code)."""

    status = 403

    def __init__(self, message: str, error_type: str = "InvalidSignatureException"):
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class Authorization:
    """The fields of `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/
    aws4_request, SignedHeaders=a;b, Signature=HEX`."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization:
    scheme, _, rest = value.partition(" ")
    fields = dict(_FIELD.findall(rest))
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if name not in fields]
    if scheme != ALGORITHM or missing:
        raise SignatureError(
            f"malformed {ALGORITHM} Authorization header (missing {', '.join(missing)})",
            "IncompleteSignatureException",
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise SignatureError(
            "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request",
            "IncompleteSignatureException",
        )
    signed = tuple(fields["SignedHeaders"].lower().split(";"))
    return Authorization(*scope[:4], signed_headers=signed, signature=fields["Signature"])


async def verify(
    request: Request, access_key_id: str, secret: str, now: datetime | None = None
) -> None:
    """Accept a SigV4-signed request or raise SignatureError naming what is wrong."""
    auth = parse_authorization(request.headers.get("authorization", ""))
    if auth.access_key_id != access_key_id:
        raise SignatureError(
            f"unknown access key id {auth.access_key_id!r}: use {access_key_id!r}, with the "
            "server's token as the secret access key",
            "UnrecognizedClientException",
        )
    headers = _signed_headers(request, auth.signed_headers)
    amz_date = _check_date(headers, auth, now or datetime.now(UTC))
    try:
        body = await request.body()  # cached on the request: the route reads it again
    except RuntimeError as exc:  # a multipart form the route streamed before this ran
        raise SignatureError("a signed body must be JSON; upload files with the token") from exc
    _check_payload_hash(headers, body)
    expected = _expected_signature(request, auth, headers, body, amz_date, secret)
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):  # any text
        raise SignatureError(
            "The request signature we calculated does not match the signature you provided. "
            "Check your secret access key (the server's token) and signing method."
        )


def _signed_headers(request: Request, names: tuple[str, ...]) -> HTTPHeaders:
    """The request's headers that the signature covers, every value of each, as sent."""
    missing = {"host", "x-amz-date"} - set(names)
    if missing:
        raise SignatureError(f"SignedHeaders must include {', '.join(sorted(missing))}")
    headers = HTTPHeaders()
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name in names:
            headers[name] = raw_value.decode("utf-8", "surrogateescape")  # appends, never replaces
    absent = [name for name in names if name not in headers]
    if absent:
        raise SignatureError(f"signed header(s) missing from the request: {', '.join(absent)}")
    return headers


def _check_date(headers: HTTPHeaders, auth: Authorization, now: datetime) -> str:
    amz_date = headers["x-amz-date"]
    try:
        moment = datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError as exc:
        raise SignatureError(f"X-Amz-Date {amz_date!r} is not YYYYMMDD'T'HHMMSS'Z'") from exc
    if abs(now - moment) > MAX_SKEW:
        raise SignatureError(
            f"Signature expired: {amz_date} is more than 15 minutes from the server's time "
            f"{now.strftime(SIGV4_TIMESTAMP)}"
        )
    if auth.date != amz_date[:8]:
        raise SignatureError(
            f"Credential date {auth.date} does not match X-Amz-Date {amz_date[:8]}"
        )
    return amz_date


def _check_payload_hash(headers: HTTPHeaders, body: bytes) -> None:
    """A signed X-Amz-Content-SHA256 stands in for the body in the signature (botocore takes
    it as given), so it must be the body's hash: else the body could be swapped freely."""
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared.lower() != hashlib.sha256(body).hexdigest():
        raise SignatureError(
            "The provided 'x-amz-content-sha256' header does not match what was computed "
            "(unsigned and streaming payloads are not accepted)"
        )


class _Signer(SigV4Auth):
    """botocore's signer over exactly the headers the client signed (the request holds only
    those): botocore's own choice would leave some out, e.g. User-Agent, which another SDK
    may sign."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return request.headers


def _expected_signature(
    request: Request,
    auth: Authorization,
    headers: HTTPHeaders,
    body: bytes,
    amz_date: str,
    secret: str,
) -> str:
    # The path as sent (still percent-encoded, e.g. an ARN's %3A and %2F): botocore signs the
    # encoded path, and the decoded one would give another canonical request.
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    url = f"{request.url.scheme}://{headers['host']}{raw_path.decode('latin-1')}"
    aws_request = AWSRequest(
        method=request.method,
        url=url,
        data=body,
        params=request.query_params.multi_items(),  # decoded; the signer re-encodes them
    )
    aws_request.headers = headers
    aws_request.context["timestamp"] = amz_date
    signer = _Signer(Credentials(auth.access_key_id, secret), auth.service, auth.region)
    canonical = signer.canonical_request(aws_request)
    return signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
