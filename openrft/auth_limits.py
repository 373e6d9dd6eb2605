"""Rate limiting of failed authentication, shared by openrft's HTTP servers (the job server,
openrft.api.auth, and `openrft serve`, openrft.serve.auth): a client address with
`max_failures` refused requests within `window_s` is answered 429 for `window_s`, so a token
cannot be guessed at network speed. Each server logs the refusals it counts, with the address.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW_S = 60.0


class FailureLimiter:
    """Counts refused requests per client address; `max_failures` within `window_s` blocks
    the address for `window_s`. Thread-safe (sync routes run in a thread pool)."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self.blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def blocked(self, address: str) -> bool:
        return self.retry_after(address) > 0

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it is not blocked."""
        with self._lock:
            until = self.blocked_until.get(address)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self.blocked_until[address]
                return 0.0
            return left

    def fail(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            times = self.failures[address]
            times.append(now)
            while times and now - times[0] > self.window_s:
                times.popleft()
            if len(times) >= self.max_failures:
                self.blocked_until[address] = now + self.window_s
                del self.failures[address]


def client_address(request: Any) -> str:
    """The address a Starlette request came from ("unknown" when the server cannot tell).
    Proxy headers are not trusted: a client could name any address in them."""
    client = getattr(request, "client", None)
    return client.host if client else "unknown"


def retry_after_header(seconds: float) -> str:
    """The Retry-After value (whole seconds, at least 1) for a block with `seconds` left."""
    return str(max(1, math.ceil(seconds)))
