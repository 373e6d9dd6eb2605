"""Opt-in invocation logging: one JSON line per chat request, the raw material of
`openrft data from-logs` (Bedrock builds RFT data sets from its invocation logs the same way).

A record (schema "openrft.invocation/1"):

    {"schema": "openrft.invocation/1", "id": "chatcmpl-...", "timestamp": "2026-12-02T13:00:00Z",
     "model": "smollm2-135m-instruct", "request": {...the request body as sent...},
     "requestMetadata": {"team": "search"}, "response": {...the chat.completion...} | null,
     "error": null | {"status": 400, "message": "..."},
     "timing": {"queue_s": 0.01, "generate_s": 0.8, "total_s": 0.82}, "batch": {"id": 7, "size": 3}}

`requestMetadata` is the request's `metadata` (OpenAI's name) or `requestMetadata` (Bedrock's):
string keys and values that callers tag their calls with so the logs can be filtered later.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = "openrft.invocation/1"


class InvocationLog:
    """Appends records to a JSONL file; safe to call from several threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(
        self,
        record_id: str,
        model: str,
        request: Any,
        metadata: dict[str, str],
        response: dict[str, Any] | None,
        error: dict[str, Any] | None,
        timing: dict[str, float],
        batch: dict[str, int] | None,
    ) -> None:
        record = {
            "schema": SCHEMA,
            "id": record_id,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model,
            "request": request,
            "requestMetadata": metadata,
            "response": response,
            "error": error,
            "timing": {key: round(value, 6) for key, value in timing.items()},
            "batch": batch,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:  # one whole line at a time, flushed: a crash loses at most the last
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
