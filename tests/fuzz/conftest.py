"""Fuzz tests: hypothesis runs under the `openrft-fuzz` profile (no example database, fixed
inputs); OPENRFT_FUZZ_EXAMPLES raises the number of inputs per test (tests/fuzz/_fuzz.py)."""

from __future__ import annotations

from hypothesis import settings

from ._fuzz import PROFILE

settings.load_profile(PROFILE)
