"""The training program's command line, generated from the config models it fills.

One flag per field of the job spec (loraq.job_spec.Hyperparameters) and per TrainingConfig field a run
from the command line sets, with the field's description as its help and the field's default, the way TRL's
TrlParser builds a parser from dataclasses: a flag cannot drift from its field. A bool is `--flag` (or
`--flag true|false`), a Literal is a choice, a list takes several values. The seed document's flag names
still work (`--num_train_epochs` for n_epochs; the others are the fields' own names), as does its default
base model. Values are checked twice: by argparse for their type (`--lora_r x`) and by the config models
for everything else (`--lora_r 0`); either way the error is one line naming the flag.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from loraq.job_spec import DpoHyperparameters, Hyperparameters
from training.config import TrainingConfig

SEED_DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
# The TrainingConfig fields a command-line run sets; the others (checkpoint, progress and stop paths, ...)
# follow from --output_dir or are the worker's.
RUN_FIELDS = (
    "base_model", "method", "train_path", "eval_path", "output_dir", "seed", "resume_from", "init_adapter",
    "max_train_seconds",
    "trust_remote_code", "model_cache_dir", "speedups", "nproc_per_node", "strategy",
)  # fmt: skip
COMMAND_LINE_DEFAULTS = {"base_model": SEED_DEFAULT_MODEL}
ALIASES = {"n_epochs": ["--num_train_epochs"]}  # the seed document's name
DERIVED_FROM_OUTPUT_DIR = ("checkpoint_dir", "progress_path")
# DPO's own fields (beta): flags of their own group, for --method dpo.
DPO_FIELDS = [name for name in DpoHyperparameters.model_fields if name not in Hyperparameters.model_fields]


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage of some thirty flags would bury it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str | None = None) -> FlagParser:
    parser = FlagParser(
        prog=prog or "python -m training.run",
        description="LoRA SFT (or DPO, --method dpo) of a chat model on a JSONL file: a TrainingConfig file "
        "(--config, what the worker writes) or the flags below.",
    )
    parser.add_argument("--config", default=None, help="A TrainingConfig JSON file; takes no other flags")
    run = parser.add_argument_group("run")
    for name in RUN_FIELDS:
        _add_flag(run, name, TrainingConfig.model_fields[name])
    hyperparameters = parser.add_argument_group("hyperparameters", "The job spec's fields (loraq.job_spec)")
    for name, field in Hyperparameters.model_fields.items():
        _add_flag(hyperparameters, name, field)
    dpo = parser.add_argument_group("dpo", "With --method dpo (loraq.job_spec.DpoHyperparameters)")
    for name in DPO_FIELDS:
        _add_flag(dpo, name, DpoHyperparameters.model_fields[name])
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainingConfig:
    """The run's config: the --config file, or the flags given (a checkpoint folder and a progress file in
    --output_dir, as the seed script keeps them); an invalid value exits with one line naming its flag."""
    values = {name: value for name, value in vars(args).items() if name != "config"}
    if args.config is not None:
        if values:
            parser.error(f"--config takes no other flags (got {', '.join(_flag(name) for name in values)})")
        try:
            return TrainingConfig.model_validate_json(Path(args.config).read_text())
        except (OSError, ValidationError) as exc:
            parser.error(f"argument --config: {_one_line(exc)}")
    hyperparameters = {name: values.pop(name) for name in list(values) if name in DpoHyperparameters.model_fields}
    data: dict[str, Any] = {**COMMAND_LINE_DEFAULTS, **values, "hyperparameters": hyperparameters}
    if data.get("eval_path") == "":
        data["eval_path"] = None  # the seed script's way of saying none
    if "output_dir" in data:
        output = Path(data["output_dir"]).resolve()
        data.update(output_dir=str(output), checkpoint_dir=str(output), progress_path=str(output / "progress.jsonl"))
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as exc:
        parser.error(_flag_errors(exc))


# --------------------------------------------------------------------------- from fields to flags


def _add_flag(group: argparse._ArgumentGroup, name: str, field: FieldInfo) -> None:
    default = COMMAND_LINE_DEFAULTS.get(name, field.get_default(call_default_factory=True))
    shown = "required" if field.is_required() and name not in COMMAND_LINE_DEFAULTS else f"default: {_shown(default)}"
    description = field.description or ""
    help_text = description if "default" in description else f"{description} ({shown})"
    group.add_argument(
        _flag(name),
        *ALIASES.get(name, []),
        dest=name,
        default=argparse.SUPPRESS,  # only the flags given reach the config; the models fill in the rest
        help=help_text.replace("%", "%%"),
        **_value_options(name, field.annotation),
    )


def _value_options(name: str, annotation: Any) -> dict[str, Any]:
    """argparse options for a field's type: its values' type, choices and count."""
    members = [a for a in get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    choices = [value for member in members if get_origin(member) is Literal for value in get_args(member)]
    kinds = [member for member in members if get_origin(member) is not Literal]
    if any(get_origin(kind) is list for kind in kinds):  # a list, or a keyword instead of one (speedups)
        return {"nargs": "+", "metavar": name.upper()}
    if kinds == [bool] and choices:  # gradient_checkpointing: true, false or auto
        return {"choices": ["true", "false", *choices]}
    if kinds == [bool]:
        return {"nargs": "?", "const": True, "type": _boolean, "metavar": "true|false"}
    if choices and not kinds:
        return {"choices": choices}
    if len(kinds) == 1 and kinds[0] in (int, float, str):
        return {"type": kinds[0]}
    raise TypeError(f"no flag for field {name} of type {annotation}")


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _shown(default: Any) -> str:
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)


def _flag(name: str) -> str:
    return f"--{name}"


# --------------------------------------------------------------------------- errors


def _flag_errors(exc: ValidationError) -> str:
    """Pydantic's errors as `argument --flag: message`, joined into one line."""
    lines = []
    for error in exc.errors():
        location, message = error["loc"], error["msg"].removeprefix("Value error, ")
        if not location:  # a check across fields names its field first: `nproc_per_node: ...`
            field, _, message = message.partition(": ")
            location = (field,)
        name = str(location[1] if location[0] == "hyperparameters" and len(location) > 1 else location[0])
        name = "output_dir" if name in DERIVED_FROM_OUTPUT_DIR else name
        flags = "/".join([_flag(name), *ALIASES.get(name, [])])
        line = f"argument {flags}: {message}"
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
