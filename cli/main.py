"""The `loraq` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.client.parser import add_client_commands


def _worker_settings_error() -> str | None:
    """A worker setting that would fail every job it claims, said before the worker starts."""
    from loraq.settings import get_settings
    from training.speedups import parse_speedups

    try:
        parse_speedups(get_settings().training_speedups)
    except ValueError as exc:
        return f"LORAQ_TRAINING_SPEEDUPS: {exc}"
    return None


def _cmd_up(args: argparse.Namespace) -> int:
    from cli.embedded import run_embedded

    if error := _worker_settings_error():
        sys.exit(f"loraq up: {error}")
    return run_embedded(args.host, args.port, Path(args.data_dir))


def _cmd_api(args: argparse.Namespace) -> int:
    from cli.processes import api_command

    os.execv(sys.executable, api_command(args.host, args.port, args.workers))


def _cmd_worker(args: argparse.Namespace) -> int:
    from cli.processes import thread_environment, worker_command
    from loraq.job_spec import queue_for_gpus
    from loraq.settings import get_settings

    if error := _worker_settings_error():
        sys.exit(f"loraq worker: {error}")
    queues = args.queues or get_settings().queue
    if args.gpus_per_job < 1:
        sys.exit("loraq worker: --gpus-per-job must be at least 1")
    # Jobs on N GPUs wait in their own queue (loraq.job_spec.queue_for_gpus), so a worker takes only jobs
    # of its group's size.
    queues = ",".join(queue_for_gpus(queue, args.gpus_per_job) for queue in queues.split(","))
    if args.gpus:
        from cli.gpu_fleet import gpu_groups, run_fleet

        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        try:
            gpu_groups(gpus, args.gpus_per_job)
        except ValueError as exc:
            sys.exit(f"loraq worker: {exc}")
        return run_fleet(gpus, queues, args.name, args.threads, args.gpus_per_job)
    if args.threads:
        os.environ.update(thread_environment(args.threads))
    os.execv(sys.executable, worker_command(queues, args.name))


def _cmd_validator(args: argparse.Namespace) -> int:
    from cli.processes import validator_command
    from loraq.settings import get_settings

    os.execv(sys.executable, validator_command(get_settings().validation_queue, args.name, args.concurrency))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from loraq.migrate import upgrade
    from loraq.settings import get_settings

    settings = get_settings()
    upgrade(settings.resolved_database_url, args.revision)
    if settings.bootstrap_api_key:
        from models.api_keys import ensure_key
        from models.session import session_scope

        with session_scope(settings.resolved_database_url) as session:
            ensure_key(session, owner="default", name="bootstrap", key=settings.bootstrap_api_key, is_admin=True)
    return 0


def _keys_database(args: argparse.Namespace) -> str:
    """The deployment to manage: an embedded data folder, or the LORAQ_* settings."""
    from loraq.migrate import upgrade
    from loraq.settings import Settings

    settings = Settings(data_dir=Path(args.data_dir)) if args.data_dir else Settings()
    upgrade(settings.resolved_database_url)
    return settings.resolved_database_url


def _cmd_keys(args: argparse.Namespace) -> int:
    from models.api_keys import create_key, list_keys, revoke_key
    from models.session import session_scope

    with session_scope(_keys_database(args)) as session:
        if args.keys_command == "create":
            key = create_key(session, owner=args.owner or args.name, name=args.name, is_admin=args.admin)
            print(key)
            print(
                f"(owner {args.owner or args.name}{', admin' if args.admin else ''}; shown once, store it now)",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for row in list_keys(session):
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                print(f"{row.id}  owner={row.owner}  name={row.name}  {'admin' if row.is_admin else 'user'}  {state}")
        elif not revoke_key(session, args.key_id):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
    return 0


def _cmd_build_tiny(args: argparse.Namespace) -> int:
    from training.tiny_model import write_tiny_model

    folder = write_tiny_model(Path(args.dir))
    print(f"loraq-tiny-chat written to {folder}")
    return 0


DATA_DIR_HELP = "An embedded deployment's data folder (else LORAQ_* settings)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraq", description="Self-hosted OpenAI-compatible LoRA fine-tuning")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="Run everything on this machine (SQLite, embedded Redis, API, a validator, one worker)"
    )
    up.add_argument("--host", default="127.0.0.1", help="Address the API listens on")
    up.add_argument("--port", type=int, default=8000, help="Port the API listens on")
    up.add_argument(
        "--data-dir",
        default=os.environ.get("LORAQ_DATA_DIR", "loraq-data"),
        help="Folder for the database, Redis, uploads, checkpoints and adapters",
    )
    up.set_defaults(func=_cmd_up)

    api = commands.add_parser("api", help="Run the API server (configured by LORAQ_* variables)")
    api.add_argument("--host", default="0.0.0.0", help="Address to listen on")
    api.add_argument("--port", type=int, default=8000, help="Port to listen on")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(func=_cmd_api)

    worker = commands.add_parser("worker", help="Run a training worker (configured by LORAQ_* variables)")
    worker.add_argument("--queues", default=None, help="Comma-separated broker queues to take jobs from")
    worker.add_argument("--name", default="worker", help="Worker name (Celery node name prefix)")
    worker.add_argument(
        "--gpus",
        default=None,
        help="Comma-separated GPU indices: one worker process per GPU (per group of --gpus-per-job GPUs), each "
        "seeing only its devices",
    )
    worker.add_argument(
        "--gpus-per-job",
        type=int,
        default=1,
        help="Train each job on this many GPUs (torchrun, one process per GPU) and take only such jobs, from "
        "the queue <queue>.gpusN; without --gpus, on this many CPU processes (gloo). List N in "
        "LORAQ_GPUS_PER_JOB for the API to accept such jobs (default: 1)",
    )
    worker.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per training process (default: all cores; with --gpus, an equal share per GPU)",
    )
    worker.set_defaults(func=_cmd_worker)

    validator = commands.add_parser(
        "validator", help="Run a validator: tokenizes new jobs' files before they are queued (no GPU needed)"
    )
    validator.add_argument("--name", default="validator", help="Validator name (Celery node name prefix)")
    validator.add_argument("--concurrency", type=int, default=2, help="Jobs validated at once")
    validator.set_defaults(func=_cmd_validator)
    migrate = commands.add_parser("migrate", help="Apply the database migrations")
    migrate.add_argument("--revision", default="head", help="Target revision")
    migrate.set_defaults(func=_cmd_migrate)

    commands.add_parser(  # parsed by the training program itself (training.run), see main()
        "train",
        help="Train one adapter from the command line (the seed script's flags; see `loraq train --help`)",
        add_help=False,
    )

    # --data-dir is accepted before and after the key command (`keys --data-dir D list`, `keys list --data-dir D`):
    # on the key commands it is SUPPRESSed when absent, so it does not overwrite a value given before them.
    keys = commands.add_parser("keys", help="Create, list and revoke API keys")
    keys.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[data_dir], help="Create a key and print it (shown once)")
    create.add_argument("--name", required=True, help="A label for the key")
    create.add_argument("--owner", default=None, help="Owner of the files and jobs made with it (default: the name)")
    create.add_argument("--admin", action="store_true", help="May see every owner's files and jobs")
    key_commands.add_parser("list", parents=[data_dir], help="List keys (never their secrets)")
    revoke = key_commands.add_parser(
        "revoke", parents=[data_dir], help="Revoke a key by id (takes effect within 10 seconds)"
    )
    revoke.add_argument("key_id", help="Key id from `loraq keys list`")
    keys.set_defaults(func=_cmd_keys)

    models = commands.add_parser("models", help="Base models: build the tiny one, list a server's")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    tiny = model_commands.add_parser("build-tiny", help="Write the built-in loraq-tiny-chat model to a folder")
    tiny.add_argument("dir", help="Destination folder")
    tiny.set_defaults(func=_cmd_build_tiny)
    add_client_commands(commands, model_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # the training program's own command line, flags generated from its config
        from training.run import main as train_main

        return train_main(argv[1:], prog="loraq train")
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
