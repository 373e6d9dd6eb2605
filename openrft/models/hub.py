"""Models named by Hugging Face id (`org/name`): the snapshot in the local Hugging Face cache,
else a download from the Hub when the machine is online.

    directory = hub_snapshot("Qwen/Qwen2.5-0.5B-Instruct")   # .../models--Qwen--.../snapshots/<sha>

The cache is huggingface_hub's own (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
~/.cache/huggingface/hub) and its `refs/main` picks the snapshot, so a model fetched with
`hf download` or by transformers is found as is. `HF_HUB_OFFLINE=1` (or TRANSFORMERS_OFFLINE)
never downloads. The environment is read on each call: huggingface_hub fixes its constants
when imported, and a test or a launcher may set them later.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    DryRunError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from openrft.errors import ModelError

# `org/name`: exactly one slash, so built-in aliases and bare names never reach the Hub.
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Files transformers never reads for a PyTorch model: other frameworks' weights, GGUF
# quantizations and Meta's original checkpoints. Skipping them can save gigabytes.
SKIPPED = ["*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.pth",
           "original/*", "onnx/*", "openvino/*", "coreml/*"]  # fmt: skip
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's spelling of a true flag


def is_hf_id(name: str) -> bool:
    return bool(HF_ID.match(name))


def hf_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, from the environment as it is now."""
    env = os.environ
    xdg = env.get("XDG_CACHE_HOME") or "~/.cache"
    home = env.get("HF_HOME") or os.path.join(xdg, "huggingface")
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(hub)).expanduser()


def hf_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.upper() in TRUE


def hub_snapshot(repo_id: str) -> Path:
    """The directory of `repo_id`'s main revision: cached, or downloaded when online."""
    cache = hf_cache_dir()
    cached = cached_snapshot(repo_id, cache)
    if cached is not None:
        return cached
    tried = _tried(repo_id, cache)
    if hf_offline():
        raise ModelError(
            f"model '{repo_id}' is not in the Hugging Face cache ({tried}) and HF_HUB_OFFLINE "
            f"is set, so it was not downloaded: run `hf download {repo_id}` on a machine that "
            "is online (with the same HF_HOME / HF_HUB_CACHE), or unset HF_HUB_OFFLINE"
        )
    return _download(repo_id, cache, tried)


def cached_snapshot(repo_id: str, cache: Path) -> Path | None:
    """The snapshot `refs/main` points at, if it holds a config and all the weights."""
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if not isinstance(found, str):  # None or _CACHED_NO_EXIST: not cached
        return None
    snapshot = Path(found).parent
    return snapshot if _has_weights(snapshot) else None


def _has_weights(snapshot: Path) -> bool:
    """A partial download (killed, or only config.json fetched by another tool) is not a
    model: is_file() also fails for a symlink whose blob never arrived."""
    if any((snapshot / name).is_file() for name in WEIGHT_FILES):
        return True
    for index in WEIGHT_INDEXES:
        if (snapshot / index).is_file():
            try:
                shards = set(json.loads((snapshot / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((snapshot / shard).is_file() for shard in shards)
    return False


def _tried(repo_id: str, cache: Path) -> str:
    """What was looked at, for error messages: the repo's cache folder and its snapshot, and
    the local directory of that spelling (a mistyped path looks like an id)."""
    local = f"no local directory {Path(repo_id).resolve()}"
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    ref = folder / "refs" / "main"
    if not ref.is_file():
        return f"looked in {folder}: no refs/main there; {local}"
    snapshot = folder / "snapshots" / ref.read_text().strip()
    return f"looked in {snapshot} (refs/main): no config.json with all its weights; {local}"


def _download(repo_id: str, cache: Path, tried: str) -> Path:
    print(f"openrft: downloading {repo_id} from the Hugging Face Hub into {cache}...", flush=True)
    try:
        listing = snapshot_download(repo_id, cache_dir=cache, dry_run=True)
        names = [entry.filename for entry in listing]
        # Repositories often carry both formats; transformers prefers safetensors.
        has_safetensors = any(n.endswith(".safetensors") for n in names)
        skipped = SKIPPED + (["*.bin"] if has_safetensors else [])
        folder = snapshot_download(repo_id, cache_dir=cache, ignore_patterns=skipped)
    except RevisionNotFoundError as exc:
        raise ModelError(f"model '{repo_id}': the Hub has no main revision ({exc})") from exc
    except (DryRunError, LocalEntryNotFoundError, HfHubHTTPError) as exc:
        raise ModelError(_download_failure(repo_id, exc, tried)) from exc
    except OSError as exc:  # a full disk, a permission problem in the cache
        raise ModelError(f"model '{repo_id}': download into {cache} failed: {exc}") from exc
    snapshot = Path(folder)
    if not (snapshot / "config.json").is_file():
        raise ModelError(
            f"model '{repo_id}' has no config.json on the Hub: not a transformers model "
            f"(downloaded to {snapshot})"
        )
    return snapshot


def _download_failure(repo_id: str, exc: Exception, tried: str) -> str:
    cause = exc.__cause__ if isinstance(exc, DryRunError) and exc.__cause__ else exc
    if isinstance(cause, RepositoryNotFoundError) or (
        isinstance(cause, HfHubHTTPError) and cause.response.status_code in (401, 403)
    ):
        return (
            f"model '{repo_id}' is not on the Hugging Face Hub, or is private or gated: check "
            "the id; for a gated model accept its licence on the Hub and set HF_TOKEN"
        )
    if isinstance(cause, OfflineModeIsEnabled | LocalEntryNotFoundError | DryRunError):
        reason = "the Hub could not be reached (offline?)"
    else:
        reason = f"the Hub could not be reached ({type(cause).__name__}: {cause})"
    return (
        f"model '{repo_id}' is not in the Hugging Face cache ({tried}) and {reason}: connect "
        f"to the internet, or run `hf download {repo_id}` where you can and copy the cache"
    )
