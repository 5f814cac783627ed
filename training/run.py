"""The training program: one LoRA SFT (or DPO) run, from a config file or from the command line's flags.

    python -m training.run --config job.json                  # what the worker runs
    python -m training.run --train_path train.jsonl --output_dir out [--base_model ...]   # = `loraq train`
    python -m training.run ... --nproc_per_node 2      # one program in two processes, under torchrun

Parse the flags (generated from the config models, training.flags) -> train (training.sft, with the trainer
of training.dpo for `method: dpo`) -> report.
"""

from __future__ import annotations

import logging
import sys
import traceback

from training import distributed
from training.flags import build_parser, config_from_args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    if config.nproc_per_node > 1:
        if not distributed.under_launcher():  # the same program, once per process, under torchrun
            distributed.exec_under_launcher(config.nproc_per_node, sys.argv[1:] if argv is None else argv)
        distributed.die_with_launcher()
    from training.progress import ProgressWriter  # torch loads once the flags are good
    from training.sft import build_trainer, describe_failure, train

    configure_logging()
    try:
        if config.method == "dpo":
            from training.dpo import build_dpo_trainer

            result = train(config, build_dpo_trainer)
        else:
            result = train(config, build_trainer)
    except BaseException as exc:
        if distributed.lost_a_peer(exc):  # another rank died: no failure of ours to report
            traceback.print_exc()
            return 1
        failure = describe_failure(exc)
        ProgressWriter(config.progress_path).write("failed", **failure)  # from whichever rank failed
        if args.config is not None or failure["code"] == "training_error":
            traceback.print_exc()  # for the worker's log, and for our own errors: the traceback is what helps
        else:
            print(f"{parser.prog}: {failure['code']}: {failure['message']}", file=sys.stderr)
        return 1
    if not distributed.is_main_process():
        return 0
    if result["type"] == "completed":
        print(f"adapter saved to {result['adapter_dir']} ({result['steps']} steps, loss {result['train_loss']:.4f})")
    else:
        print(f"stopped after {result['steps']} steps: {result['reason']}")
    return 0


def configure_logging() -> None:
    """Readable progress lines; no progress bars in logs."""
    import datasets
    import transformers

    level = logging.INFO if distributed.is_main_process() else logging.WARNING  # rank 0 tells the progress
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
