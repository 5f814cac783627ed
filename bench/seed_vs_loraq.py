"""The seed recipe (bench/seed_recipe.py) against `loraq train`, same flags, model and data, one command.

    python bench/seed_vs_loraq.py [--examples 96] [--epochs 3]

All run the seed's default flags on the built-in tiny model and a generated chat dataset (long system
and user prompts, short replies, like most SFT data). Reported for each: tokens per second over all
tokens processed and over supervised tokens (the seed recipe supervises every token, prompts included;
loraq only the replies), training wall time, peak memory (max RSS of the training process), and the loss
on the assistant tokens of a held-out file, since that is what both adapters are for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = ["billing", "shipping", "returns", "passwords", "invoices", "warranty", "upgrades", "refunds"]


def make_dataset(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    system = (
        "You are the support assistant of a hardware shop. Answer in one short sentence, politely, "
        "and never invent order numbers. " * 2
    ).strip()
    rows = []
    for i in range(count):
        topic = rng.choice(TOPICS)
        context = " ".join(
            rng.choice(
                [
                    "I bought",
                    "a laptop",
                    "last week",
                    "and",
                    "the order",
                    "was late",
                    "my account",
                    "shows",
                    "an error",
                    "twice",
                ]
            )
            for _ in range(30)
        )
        question = f"Ticket {i}: a question about {topic}. {context}. What should I do about my {topic}?"
        answer = f"For {topic}, please open Settings, choose {topic.title()}, and follow step {i % 7 + 1}."
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(command: list[str], log: Path) -> tuple[float, int, str]:
    """Run a training command; returns (wall seconds, peak RSS in MiB, its output)."""
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[1]} failed; see {log}")
    return time.monotonic() - started, usage.ru_maxrss // 1024, log.read_text()


def token_counts(tokenizer, rows: list[dict]) -> dict[str, int]:
    from training.loss_masks import tokenize_with_mask

    total = supervised = 0
    for row in rows:
        example = tokenize_with_mask(tokenizer, row["messages"])
        total += len(example["input_ids"])
        supervised += sum(label != -100 for label in example["labels"])
    return {"all": total, "supervised": supervised}


def held_out_loss(base_dir: Path, adapter_dir: Path, rows: list[dict]) -> float:
    """Mean cross-entropy on the assistant tokens of held-out conversations."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.loss_masks import tokenize_with_mask

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    losses, weights = 0.0, 0
    with torch.no_grad():
        for row in rows:
            example = tokenize_with_mask(tokenizer, row["messages"])
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor([example["labels"]])
            count = int((labels[:, 1:] != -100).sum())
            losses += float(model(input_ids=ids, labels=labels).loss) * count
            weights += count
    return losses / weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=96, help="Training conversations")
    parser.add_argument("--epochs", type=int, default=3, help="--num_train_epochs for both (the seed's 3)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from training.tiny_model import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="loraq-seed-bench-"))
    base = write_tiny_model(folder / "base")
    train = write_jsonl(folder / "train.jsonl", make_dataset(args.examples, seed=1))
    held_out_rows = make_dataset(16, seed=2)
    held_out = write_jsonl(folder / "held_out.jsonl", held_out_rows)
    flags = ["--base_model", str(base), "--train_path", str(train), "--num_train_epochs", str(args.epochs)]
    # The seed's defaults for everything else: lr 1e-4, batch 1 x grad-accum 4, max length 2048, r 16, ...

    seed_wall, seed_rss, seed_log = run(
        [sys.executable, "bench/seed_recipe.py", *flags, "--output_dir", str(folder / "seed")], folder / "seed.log"
    )
    seed_runtime = float(re.findall(r"'train_runtime': '?([\d.]+)", seed_log)[-1])
    counts = token_counts(AutoTokenizer.from_pretrained(base), make_dataset(args.examples, seed=1))
    epochs = args.epochs
    results = {
        "seed recipe": {"runtime": seed_runtime, "wall": seed_wall, "rss": seed_rss,
                        "all": counts["all"] * epochs, "supervised": counts["all"] * epochs,
                        "loss": held_out_loss(base, folder / "seed", held_out_rows)},
    }  # fmt: skip
    # loraq as it runs by default (activation checkpointing only when memory needs it), and with
    # checkpointing forced on, the seed recipe's memory-saving setting under TRL 1.x.
    for name, extra in (("loraq train", []), ("loraq train, checkpointing on", ["--gradient_checkpointing", "true"])):
        out = folder / name.replace(" ", "_").replace(",", "")
        wall, rss, _ = run(
            [sys.executable, "-m", "loraq.cli", "train", *flags, *extra, "--output_dir", str(out)],
            out.with_suffix(".log"),
        )
        results[name] = {
            "runtime": json.loads((out / "loraq.json").read_text())["metrics"]["train_runtime_s"],
            "wall": wall, "rss": rss, "all": counts["all"] * epochs, "supervised": counts["supervised"] * epochs,
            "loss": held_out_loss(base, out, held_out_rows),
        }  # fmt: skip
    print(f"\n{args.examples} conversations x {epochs} epochs, tiny model, seed default flags, {os.cpu_count()} CPUs\n")
    print("| recipe | tokens/s (all) | tokens/s (supervised) | training s | wall s | peak RSS MiB | held-out loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['all'] / r['runtime']:.0f} | {r['supervised'] / r['runtime']:.0f} | {r['runtime']:.1f} "
            f"| {r['wall']:.1f} | {r['rss']} | {r['loss']:.3f} |"
        )
    print()
    for name in ("loraq train", "loraq train, checkpointing on"):
        r, seed = results[name], results["seed recipe"]
        print(
            f"{name} / seed recipe: {seed['runtime'] / r['runtime']:.2f}x tokens per second (target >= 2x), "
            f"peak RSS {r['rss'] - seed['rss']:+d} MiB, held-out assistant loss {r['loss']:.3f} vs {seed['loss']:.3f}"
        )
    print(f"(data and logs in {held_out.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
