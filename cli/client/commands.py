"""What each client command does (their command line is cli/client/parser.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.client import transfer
from cli.client.connection import CommandError, Connection
from cli.client.events import follow
from cli.client.output import err, out, print_json, table, when
from cli.client.watch import report_outcome, watch


def run_command(name: str, args: argparse.Namespace) -> int:
    """Run one client command; a failure is one line on stderr and exit status 1."""
    try:
        connection = Connection.from_args(args)
        try:
            return COMMANDS[name](connection, args)
        finally:
            connection.close()
    except CommandError as error:
        err.print(f"error: {error}", soft_wrap=True, markup=False)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- files


def files_upload(connection: Connection, args: argparse.Namespace) -> int:
    uploaded = transfer.upload(connection, Path(args.path), args.purpose)
    if args.json:
        print_json(uploaded)
    else:
        err.print(f"{uploaded['filename']}: {uploaded['bytes']:,} bytes, {uploaded['examples']:,} examples")
        out.print(uploaded["id"])
    return 0


def files_list(connection: Connection, args: argparse.Namespace) -> int:
    files = list(connection.pages("files"))
    if args.json:
        print_json(files)
        return 0
    rows = [[f["id"], f["filename"], f["purpose"], f"{f['bytes']:,}", f["examples"], f["status"], when(f["created_at"])]
            for f in files]  # fmt: skip
    out.print(table(["id", "filename", "purpose", "bytes", "examples", "status", "created"], rows))
    return 0


# ---------------------------------------------------------------- jobs


def jobs_create(connection: Connection, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model, "training_file": args.training_file}
    optional = {"validation_file": args.validation_file, "suffix": args.suffix, "seed": args.seed}
    body |= {key: value for key, value in optional.items() if value is not None}
    if args.hp:
        body["hyperparameters"] = dict(args.hp)
    job = connection.post("fine_tuning/jobs", json=body)
    if args.json:
        print_json(job)
    else:
        out.print(job["id"])
    return watch(connection, job["id"]) if args.watch else 0


def _status(job: dict[str, Any]) -> str:
    return job["status"] + (" (pausing)" if job.get("pause_requested") else "")


def _steps(job: dict[str, Any]) -> str:
    return f"{job.get('completed_steps') or 0}/{job.get('total_steps') or '?'}"


def jobs_list(connection: Connection, args: argparse.Namespace) -> int:
    filters = {f"metadata[{key}]": value for key, value in args.metadata}
    if args.status:
        filters["status"] = args.status
    jobs = connection.get("fine_tuning/jobs", limit=args.limit, **filters)["data"]
    if args.json:
        print_json(jobs)
        return 0
    rows = [[j["id"], j["model"], _status(j), _steps(j), j["fine_tuned_model"], when(j["created_at"])] for j in jobs]
    out.print(table(["id", "model", "status", "steps", "fine-tuned model", "created"], rows))
    return 0


def _show_job(job: dict[str, Any]) -> None:
    error = job.get("error") or {}
    rows = [
        ["status", _status(job)], ["model", job["model"]], ["fine-tuned model", job["fine_tuned_model"]],
        ["training file", job["training_file"]], ["validation file", job["validation_file"]],
        ["steps", _steps(job)], ["trained tokens", job.get("trained_tokens")],
        ["estimated finish", when(job.get("estimated_finish"))], ["created", when(job["created_at"])],
        ["finished", when(job.get("finished_at"))], ["error", error.get("message")],
        ["hyperparameters", ", ".join(f"{k}={v}" for k, v in job["hyperparameters"].items() if v is not None)],
    ]  # fmt: skip
    out.print(job["id"], style="bold")
    for name, value in rows:
        out.print(f"  {name:<17} {'-' if value is None else value}", soft_wrap=True, markup=False)


def jobs_get(connection: Connection, args: argparse.Namespace) -> int:
    job = connection.get(f"fine_tuning/jobs/{args.job_id}")
    print_json(job) if args.json else _show_job(job)
    return 0


def jobs_cancel(connection: Connection, args: argparse.Namespace) -> int:
    job = connection.post(f"fine_tuning/jobs/{args.job_id}/cancel")
    print_json(job) if args.json else out.print(f"{job['id']} {job['status']}")
    return 0


def jobs_pause(connection: Connection, args: argparse.Namespace) -> int:
    job = connection.post(f"fine_tuning/jobs/{args.job_id}/pause")
    if args.json:
        print_json(job)
    else:
        pausing = job.get("pause_requested")
        out.print(
            f"{job['id']} {job['status']}"
            + (" (pausing: once it has checkpointed, or its files are validated)" if pausing else "")
        )
    return 0


def jobs_resume(connection: Connection, args: argparse.Namespace) -> int:
    job = connection.post(f"fine_tuning/jobs/{args.job_id}/resume")
    print_json(job) if args.json else out.print(f"{job['id']} {job['status']}")
    return 0


def jobs_watch(connection: Connection, args: argparse.Namespace) -> int:
    return watch(connection, args.job_id)


def _event_line(event: dict[str, Any]) -> str:
    level = "" if event["level"] == "info" else f"[{event['level']}] "
    return f"{when(event['created_at'])}  {level}{event['message']}"


def jobs_events(connection: Connection, args: argparse.Namespace) -> int:
    if not args.follow:
        events = list(reversed(list(connection.pages(f"fine_tuning/jobs/{args.job_id}/events"))))
        if args.json:
            print_json(events)
        else:
            for event in events:
                out.print(_event_line(event), soft_wrap=True, markup=False, highlight=False)
        return 0
    for kind, value in follow(connection, args.job_id):
        if kind == "end":
            return report_outcome(value, quiet=args.json)
        if args.json:
            print_json(value, indent=None)  # one event per line
        else:
            out.print(_event_line(value), soft_wrap=True, markup=False, highlight=False)
    return 0


def _checkpoint(connection: Connection, job_id: str, wanted: str) -> dict[str, Any]:
    for checkpoint in connection.pages(f"fine_tuning/jobs/{job_id}/checkpoints"):
        if wanted in (checkpoint["id"], str(checkpoint["step_number"])):
            return checkpoint
    raise CommandError(f"job {job_id} has no checkpoint {wanted!r} (see its checkpoints)")


def jobs_download(connection: Connection, args: argparse.Namespace) -> int:
    url, name = f"fine_tuning/jobs/{args.job_id}/adapter", f"{args.job_id}-adapter.tar.gz"
    if args.checkpoint:
        checkpoint = _checkpoint(connection, args.job_id, args.checkpoint)
        url = f"fine_tuning/jobs/{args.job_id}/checkpoints/{checkpoint['id']}/adapter"
        name = f"{args.job_id}-step-{checkpoint['step_number']}-adapter.tar.gz"
    output = Path(args.output or name)
    sha256 = transfer.download(connection, url, output)
    err.print(f"sha256 {sha256} verified")
    out.print(str(output), soft_wrap=True, markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------- models


def models_list(connection: Connection, args: argparse.Namespace) -> int:
    models = connection.get("models")["data"]
    if args.json:
        print_json(models)
        return 0
    rows = [[m["id"], m["owned_by"], m.get("parent") or m.get("root"), when(m["created"])] for m in models]
    out.print(table(["id", "owned by", "base", "created"], rows), soft_wrap=True)
    return 0


COMMANDS: dict[str, Callable[[Connection, argparse.Namespace], int]] = {
    "files_upload": files_upload, "files_list": files_list,
    "jobs_create": jobs_create, "jobs_list": jobs_list, "jobs_get": jobs_get, "jobs_cancel": jobs_cancel,
    "jobs_pause": jobs_pause, "jobs_resume": jobs_resume, "jobs_watch": jobs_watch, "jobs_events": jobs_events,
    "jobs_download": jobs_download,
    "models_list": models_list,
}  # fmt: skip
