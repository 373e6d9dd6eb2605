"""The job service's HTTP API (FastAPI): native, Bedrock-compatible and OpenAI-compatible
routes over `openrft.jobs`, and `serve()` behind `openrft server`. Contract: docs/api.md."""

from openrft.api.app import create_app
from openrft.api.server import ServerThread, serve

__all__ = ["ServerThread", "create_app", "serve"]
