"""`openrft server` (the job service) and `openrft jobs ...` (its command-line client).

openrft server [--host 127.0.0.1] [--port 8000] [--data-dir DIR] [--concurrency N]
               [--max-upload-mb 512]
               [--s3-endpoint-url URL] [--lambda NAME=FILE ...] [--lambda-endpoint-url URL]
openrft server token create (--read-only [--job ID] | --agent --job ID) [--expires 7d]
                            [--name TEXT] [--data-dir DIR]
openrft server token list [--data-dir DIR] | revoke TOKEN_ID [--data-dir DIR]
openrft jobs create CONFIG [--name NAME] [--set section.key=value ...]
openrft jobs list [--status STATUS] | get ID | stop ID | resume ID | delete ID
openrft jobs logs ID [--follow] | metrics ID [--follow]

The client finds the server from --server/--token, else OPENRFT_SERVER/OPENRFT_TOKEN, else
the data directory (OPENRFT_HOME or ~/.openrft: server.json and token). `jobs create`
uploads the local files a config names (data.train_file, data.validation_file, a reward.grader
file) and points the config at the uploads, so the server need not share this filesystem.
Heavy imports (uvicorn, httpx, rich) happen inside the handlers: `openrft train` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from openrft.cli.args import add_set_argument


def add_commands(commands: Any) -> None:
    """Register `server` and `jobs` on the `openrft` sub-command parser."""
    server = commands.add_parser("server", help="run the job service: APIs, queue and dashboard")
    server.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    server.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    server.add_argument("--data-dir", help="jobs, files and the token (default ~/.openrft)")
    server.add_argument("--concurrency", type=int, default=1, help="jobs running at once")
    server.add_argument(
        "--max-upload-mb", type=float, default=512, help="refuse larger uploads with 413"
    )
    aws = server.add_argument_group(
        "AWS (Bedrock-compatible API; credentials: AWS_ACCESS_KEY_ID/..., AWS_PROFILE)"
    )
    aws.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="read s3:// data and write job outputs through this S3-compatible endpoint "
        "('aws': Amazon S3)",
    )
    aws.add_argument(
        "--lambda",
        dest="lambdas",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="serve a reward handler file as the Lambda function NAME that lambdaArn "
        "arn:aws:lambda:REGION:ACCOUNT:function:NAME names (repeatable)",
    )
    aws.add_argument(
        "--lambda-endpoint-url",
        metavar="URL",
        help="invoke other Lambda ARNs through this Lambda endpoint ('aws': AWS Lambda)",
    )
    server.set_defaults(handler=cmd_server)
    add_token_commands(server)

    jobs_parser = commands.add_parser("jobs", help="submit, watch and control server jobs")
    jobs_parser.set_defaults(handler=lambda _: jobs_parser.print_help() or 2)
    actions = jobs_parser.add_subparsers(metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="server URL (default: OPENRFT_SERVER or server.json)")
    common.add_argument("--token", help="bearer token (default: OPENRFT_TOKEN or DATA_DIR/token)")

    create = actions.add_parser("create", parents=[common], help="submit a job from a config")
    create.add_argument("config", help="job config (TOML)")
    create.add_argument("--name", help="job name (default: the config's name)")
    add_set_argument(create)
    create.set_defaults(handler=cmd_create)
    listing = actions.add_parser("list", parents=[common], help="list jobs, newest first")
    listing.add_argument("--status", help="only jobs with this status (e.g. InProgress)")
    listing.set_defaults(handler=cmd_list)
    for name, handler, text in (
        ("get", cmd_get, "show a job"),
        ("stop", cmd_stop, "stop a job (it checkpoints first)"),
        ("resume", cmd_resume, "resume a stopped or failed job"),
        ("delete", cmd_delete, "delete a queued or ended job and its run directory"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("id")
        action.set_defaults(handler=handler)
    for name, handler, text in (
        ("logs", cmd_logs, "print a job's events and worker.log"),
        ("metrics", cmd_metrics, "print a job's metrics, one line per step"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("id")
        action.add_argument("--follow", "-f", action="store_true", help="until the job ends")
        action.set_defaults(handler=handler)


def add_token_commands(server: argparse.ArgumentParser) -> None:
    """`openrft server token create|list|revoke`: scoped tokens in DATA_DIR/tokens.json
    (openrft.api.tokens); a running server sees the change at once."""
    token = server.add_subparsers(metavar="token").add_parser(
        "token", help="create, list and revoke scoped tokens (read-only, per-job agent)"
    )
    token.set_defaults(handler=lambda _: token.print_help() or 2)
    actions = token.add_subparsers(metavar="ACTION")
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", help="the server's data directory (default ~/.openrft)")
    create = actions.add_parser("create", parents=[data_dir], help="create a token (shown once)")
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--read-only", action="store_true", help="GET only: to share a dashboard")
    scope.add_argument("--agent", action="store_true", help="one job's external agents")
    create.add_argument("--job", metavar="ID", help="the job (required with --agent)")
    create.add_argument("--expires", metavar="DURATION", help="e.g. 3600, 30m, 12h, 7d")
    create.add_argument("--name", default="", help="a note, shown by `token list`")
    create.set_defaults(handler=cmd_token_create)
    listing = actions.add_parser("list", parents=[data_dir], help="list tokens (not the secrets)")
    listing.set_defaults(handler=cmd_token_list)
    revoke = actions.add_parser("revoke", parents=[data_dir], help="revoke a token by its id")
    revoke.add_argument("token_id", metavar="TOKEN_ID")
    revoke.set_defaults(handler=cmd_token_revoke)


def _token_store(args: argparse.Namespace) -> tuple[Any, Path]:
    from openrft.api.tokens import FILE_NAME, TokenStore
    from openrft.jobs.service import default_data_dir

    root = Path(args.data_dir or default_data_dir()).expanduser().resolve()
    return TokenStore(root / FILE_NAME), root


def cmd_token_create(args: argparse.Namespace) -> int:
    import json

    from openrft.api.tokens import parse_duration
    from openrft.errors import RFTError
    from openrft.jobs.service import JOB_ID

    store, root = _token_store(args)
    if args.job and not (JOB_ID.match(args.job) and (root / "jobs" / args.job).is_dir()):
        raise RFTError(f"no job {args.job} in {root}")
    seconds = parse_duration(args.expires) if args.expires else None
    token, record = store.create("agent" if args.agent else "read", args.job, args.name, seconds)
    print(f"{record.id}: {record.scope} token" + (f" for job {args.job}" if args.job else ""))
    print(f"token (shown this once): {token}")
    try:
        url = json.loads((root / "server.json").read_text())["url"]
    except (OSError, ValueError, KeyError):
        url = "http://HOST:PORT"
    if record.scope == "read":
        route = f"#/jobs/{args.job}&" if args.job else "#"
        print(f"dashboard link: {url}/{route}token={token}")
    else:
        print(f"agents: {url}/api/jobs/{args.job}/agent/v1/  (Authorization: Bearer TOKEN)")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from openrft.api.views import iso

    store, _ = _token_store(args)
    tokens = store.tokens()
    if not tokens:
        print("no scoped tokens")
    for t in tokens:
        expires = "expired" if t.expired() else f"expires {iso(t.expires_at) or 'never'}"
        job = f"job {t.job_id}" if t.job_id else "all jobs"
        print(f"{t.id}  {t.scope:<5}  {job}  created {iso(t.created_at)}  {expires}  {t.name}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    store, _ = _token_store(args)
    store.revoke(args.token_id)
    print(f"revoked {args.token_id}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from openrft.api import serve
    from openrft.api.aws import AwsSettings
    from openrft.api.bedrock_lambda import parse_registration
    from openrft.errors import RFTError

    data_dir = Path(args.data_dir) if args.data_dir else None
    aws = AwsSettings(
        s3_endpoint_url=args.s3_endpoint_url,
        lambda_endpoint_url=args.lambda_endpoint_url,
        lambdas=dict(parse_registration(text) for text in args.lambdas),
    )
    if args.max_upload_mb <= 0:
        raise RFTError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    serve(
        args.host, args.port, data_dir, args.concurrency, aws=aws, max_upload_mb=args.max_upload_mb
    )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from openrft.jobs.client import connect, upload_local_files

    client = connect(args.server, args.token)
    raw = client.read_config(Path(args.config), args.set)
    for field, local, file_id in upload_local_files(client, raw, Path(args.config).parent):
        print(f"uploaded {local} as {file_id} ({field})")
    job = client.call("POST", "/api/jobs", json={"config": raw, "name": args.name})
    print(f"created {job['id']} ({job['name']}): {job['status']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from openrft.jobs.client import connect, print_jobs

    client = connect(args.server, args.token)
    params = {"status": args.status} if args.status else {}
    print_jobs(client.call("GET", "/api/jobs", params=params)["data"])
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from openrft.jobs.client import connect, print_job

    print_job(connect(args.server, args.token).call("GET", f"/api/jobs/{args.id}"))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    return _act(args, "stop")


def cmd_resume(args: argparse.Namespace) -> int:
    return _act(args, "resume")


def _act(args: argparse.Namespace, action: str) -> int:
    from openrft.jobs.client import connect

    job = connect(args.server, args.token).call("POST", f"/api/jobs/{args.id}/{action}")
    print(f"{job['id']}: {job['status']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from openrft.jobs.client import connect

    connect(args.server, args.token).call("DELETE", f"/api/jobs/{args.id}")
    print(f"deleted {args.id}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from openrft.jobs.client import connect, follow_logs

    return follow_logs(connect(args.server, args.token), args.id, args.follow)


def cmd_metrics(args: argparse.Namespace) -> int:
    from openrft.jobs.client import connect, print_metrics

    return print_metrics(connect(args.server, args.token), args.id, args.follow)
