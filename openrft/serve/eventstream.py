"""AWS event-stream framing (application/vnd.amazon.eventstream), the binary format of
Bedrock's streaming replies. botocore ships a parser (botocore.eventstream) but no encoder;
tests/serve/test_bedrock_runtime.py checks these frames with botocore's parser.

A message: a prelude (total length, headers length: big-endian uint32 each), the prelude's
CRC32, the headers, the payload, then the CRC32 of everything before it. A header: name
length (uint8), name, value type (7: string), value length (uint16), value (UTF-8).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

MEDIA_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7  # the header value type for a UTF-8 string


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string `headers` and `payload`."""
    header_bytes = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(header_bytes) + len(payload) + 4  # prelude + its CRC, ..., message CRC
    prelude = struct.pack(">II", total, len(header_bytes))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + header_bytes + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_message(event_type: str, body: Mapping[str, Any]) -> bytes:
    """An event of the stream's union (`messageStart`, `contentBlockDelta`, ...), its members
    as the JSON payload, as botocore's EventStream parses them."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(body, ensure_ascii=False).encode())


def exception_message(exception_type: str, message: str) -> bytes:
    """An exception of the stream's union (`internalServerException`, ...): botocore raises it
    from the stream as EventStreamError with that code."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


def _header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return (
        struct.pack(">B", len(name_bytes))
        + name_bytes
        + struct.pack(">BH", _STRING, len(value_bytes))
        + value_bytes
    )
