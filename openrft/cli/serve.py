"""`openrft serve`: an OpenAI-compatible chat server for a model or a run (docs/serving.md);
`openrft env serve`: an environment behind the remote-environment contract
(docs/remote-environments.md).

openrft serve --model M [--adapter RUN_DIR/final] [--host H] [--port P] [--dtype D]
              [--log-invocations FILE.jsonl] [--max-batch N]
              [--api-key KEY | --api-key-file PATH]   (or $OPENRFT_SERVE_API_KEY)
openrft env serve FILE.py[:make_env]|builtin:NAME [--host H] [--port P] [--max-episodes N]
              [--idle-timeout S]
"""

from __future__ import annotations

import argparse
from typing import Any

from openrft.errors import RFTError


def add_commands(commands: Any) -> None:
    """Add `serve` to the `openrft` sub-command parser."""
    serve = commands.add_parser("serve", help="OpenAI-compatible chat server for a model")
    serve.add_argument("--model", required=True, help="alias, model directory or .gguf")
    serve.add_argument("--adapter", help="a run's final/ (LoRA adapter), merged at load")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    serve.add_argument(
        "--log-invocations", metavar="FILE.jsonl", help="append every request and reply here"
    )
    serve.add_argument(
        "--max-batch", type=int, default=16, help="concurrent prompts decoded together at most"
    )
    serve.add_argument(
        "--api-key", help="require Authorization: Bearer KEY (default: $OPENRFT_SERVE_API_KEY)"
    )
    serve.add_argument("--api-key-file", metavar="PATH", help="read the API key from this file")
    serve.set_defaults(handler=cmd_serve)

    env_parser = commands.add_parser("env", help="host an environment for jobs on other machines")
    env_parser.set_defaults(handler=lambda _: env_parser.print_help() or 2)
    env = env_parser.add_subparsers(metavar="ACTION")
    host = env.add_parser("serve", help="serve make_env(item) over the remote-environment API")
    host.add_argument("environment", help="file.py[:make_env], module:function or builtin:NAME")
    host.add_argument("--host", default="127.0.0.1")
    host.add_argument("--port", type=int, default=8100)
    host.add_argument("--max-episodes", type=int, default=256, help="episodes open at once")
    host.add_argument(
        "--idle-timeout", type=float, default=3600.0, help="close episodes unused this long (s)"
    )
    host.set_defaults(handler=cmd_env_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from openrft.serve import serve
    from openrft.serve.auth import resolve_key

    if args.max_batch < 1:
        raise RFTError(f"--max-batch must be at least 1, got {args.max_batch}")
    serve(
        args.model,
        adapter=args.adapter,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        log_path=args.log_invocations,
        max_batch=args.max_batch,
        api_key=resolve_key(args.api_key, args.api_key_file),
    )
    return 0


def cmd_env_serve(args: argparse.Namespace) -> int:
    from openrft.serve.env_host import serve

    if args.max_episodes < 1 or args.idle_timeout <= 0:
        raise RFTError("--max-episodes must be at least 1 and --idle-timeout positive")
    serve(args.environment, args.host, args.port, args.max_episodes, args.idle_timeout)
    return 0
