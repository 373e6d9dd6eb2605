"""Every use of a library's private internals, one module per library: `compat.torch`,
`compat.transformers`, `compat.peft`. Nothing else in openrft touches them.

Each module checks at import that the installed version is one it was written for and sets
`PROBLEM` to a sentence saying why not (or None). The fast paths (openrft.fast) read it in
their capability checks, so after a library upgrade `train.fast_paths = "auto"` falls back to
the plain path with that sentence in its log line instead of breaking, or silently computing
something else, inside a private API that changed.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def version_problem(library: str, written_for: tuple[str, ...]) -> str | None:
    """None when the installed `library` is one of `written_for` (local build tags such as
    "+cpu" ignored), else why the fast paths that use its internals are off."""
    try:
        installed = version(library)
    except PackageNotFoundError:
        return f"{library} is not installed"
    if installed.split("+")[0] in written_for:
        return None
    return (
        f"{library} {installed} is not a version openrft's fast paths were written for "
        f"({', '.join(written_for)}); the plain path is used"
    )
