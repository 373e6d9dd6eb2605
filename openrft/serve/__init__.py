"""Serving: OpenAI-compatible and Bedrock Runtime chat endpoints over a model openrft loads
(see `app`).

Sits on top of the pipeline: it imports models/rollout/data, and nothing imports it.
"""

from openrft.serve.app import build_app, create_app, load_chat_model, serve

__all__ = ["build_app", "create_app", "load_chat_model", "serve"]
