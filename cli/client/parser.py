"""The client commands' command line: `loraq files ...`, `loraq jobs ...`, `loraq models list`.

Kept free of httpx and rich: the server commands build the same parser, and a command's module is imported
only when it runs (cli/client/commands.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def _run(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from cli.client.commands import run_command

        return run_command(name, args)

    return run


def hyperparameter(text: str) -> tuple[str, Any]:
    """`key=value`, the value read as JSON where it is JSON (3, 2e-4, true, ["q_proj"]), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def metadata_pair(text: str) -> tuple[str, str]:
    """`key=value`, both taken as strings (metadata values are strings)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "--base-url", default=None,
        help="API address, e.g. http://host:8000/v1 (else LORAQ_BASE_URL, OPENAI_BASE_URL, or http://127.0.0.1:8000/v1)",
    )  # fmt: skip
    target.add_argument(
        "--api-key", default=None,
        help="API key (else LORAQ_API_KEY, OPENAI_API_KEY, or the key `loraq up` saved in loraq-data/api_key)",
    )  # fmt: skip
    read = argparse.ArgumentParser(add_help=False, parents=[target])
    read.add_argument("--json", action="store_true", help="Print the API's JSON instead of a table")
    return target, read


def add_client_commands(commands: argparse._SubParsersAction, model_commands: argparse._SubParsersAction) -> None:
    target, read = _parents()

    files = commands.add_parser("files", help="Upload and list datasets on a loraq server")
    file_commands = files.add_subparsers(dest="files_command", required=True)
    upload = file_commands.add_parser("upload", parents=[read], help="Upload a chat JSONL file; prints its id")
    upload.add_argument("path", help="The JSONL file")
    upload.add_argument("--purpose", default="fine-tune", help="File purpose (fine-tune)")
    upload.set_defaults(func=_run("files_upload"))
    file_commands.add_parser("list", parents=[read], help="Your files").set_defaults(func=_run("files_list"))

    jobs = commands.add_parser("jobs", help="Create, watch, cancel and download fine-tuning jobs on a loraq server")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    create = job_commands.add_parser("create", parents=[read], help="Create a fine-tuning job; prints its id")
    create.add_argument("--model", required=True, help="Base model (see `loraq models list`)")
    create.add_argument("--training-file", required=True, help="Id of an uploaded training file")
    create.add_argument("--validation-file", default=None, help="Id of an uploaded validation file")
    create.add_argument("--suffix", default=None, help="Part of the fine-tuned model's name")
    create.add_argument("--seed", type=int, default=None, help="Random seed (default 42)")
    create.add_argument("--hp", action="append", type=hyperparameter, default=[], metavar="KEY=VALUE",
                        help="A hyperparameter, e.g. --hp n_epochs=3 --hp learning_rate=2e-4 (repeatable)")  # fmt: skip
    create.add_argument("--watch", action="store_true", help="Then watch it until it ends (exit 1 unless it succeeds)")
    create.set_defaults(func=_run("jobs_create"))
    listing = job_commands.add_parser("list", parents=[read], help="Your jobs, newest first")
    listing.add_argument("--limit", type=int, default=20, help="How many")
    listing.add_argument("--status", default=None, help="Only jobs in this status (several: queued,running)")
    listing.add_argument("--metadata", action="append", type=metadata_pair, default=[], metavar="KEY=VALUE",
                         help="Only jobs whose metadata has KEY=VALUE (repeatable: all must match)")  # fmt: skip
    listing.set_defaults(func=_run("jobs_list"))
    for name, text in (
        ("get", "One job"),
        ("cancel", "Cancel a job (a running one stops at its next step)"),
        ("pause", "Pause a job (a running one checkpoints at its next step and frees its GPU)"),
        ("resume", "Resume a paused job: back to the queue, to continue from its checkpoint"),
    ):
        command = job_commands.add_parser(name, parents=[read], help=text)
        command.add_argument("job_id", help="Job id (ftjob-...)")
        command.set_defaults(func=_run(f"jobs_{name}"))
    watch = job_commands.add_parser(
        "watch", parents=[target],
        help="Watch a job live until it ends or pauses: exit 0 if it succeeded, 1 if it failed or was cancelled, "
        "3 if it is paused",
    )  # fmt: skip
    watch.add_argument("job_id", help="Job id (ftjob-...)")
    watch.set_defaults(func=_run("jobs_watch"))
    events = job_commands.add_parser("events", parents=[read], help="A job's events, oldest first")
    events.add_argument("job_id", help="Job id (ftjob-...)")
    events.add_argument(
        "--follow", "-f", action="store_true",
        help="Keep printing new events until the job ends (then exit 0 if it succeeded, else 1)",
    )  # fmt: skip
    events.set_defaults(func=_run("jobs_events"))
    download = job_commands.add_parser(
        "download", parents=[target], help="Download the adapter (.tar.gz), resuming a partial file"
    )
    download.add_argument("job_id", help="Job id (ftjob-...)")
    download.add_argument("-o", "--output", default=None, help="File to write (default: <job id>-adapter.tar.gz)")
    download.add_argument("--checkpoint", default=None, help="A checkpoint's id (ftckpt-...) or step number")
    download.set_defaults(func=_run("jobs_download"))

    models = model_commands.add_parser("list", parents=[read], help="Base models and fine-tuned models on a server")
    models.set_defaults(func=_run("models_list"))
