"""Datasets of real size: the validation stage's speed, and the training process's memory, by file size.

    python bench/data_scale.py                       # 5 MB and 50 MB
    python bench/data_scale.py --sizes 5 50 500      # and 500 MB (generating it takes about a minute,
                                                     # validating it a few minutes on 2 cores)
    python bench/data_scale.py --text plain --sizes 5 500 --no-train   # common words only, no training

For each size it writes a chat JSONL file of generated rows (about 1 kB and 600 tokens each with the
built-in tiny model's tokenizer: system prompts, one or two user/assistant turns, some of them longer than
max_seq_length, some replies with weight 0), then:

- validates it: `training.tokenized.tokenize_file`, the function the validator calls, with the validator's
  processes (LORAQ_VALIDATOR_PROCESSES, or --processes): its wall time and tokens per second, beside
  "tokenizer alone": the file's size over the tokenizer's own encode speed (one thread, on its first 4 MB
  of rows already rendered, nothing else done) times the processes, a floor no validation can go under;
- trains on it: `loraq train --max_steps 5` with the validated rows where `loraq train` looks for them
  (<output_dir>/tokenized), so it memory-maps them instead of tokenizing; the peak resident memory of the
  whole process tree (polled every 50 ms) and the seconds from the start to the first training step.

It prints a table and the slope of peak RSS against tokens (bytes per token: 0 when memory does not grow
with the dataset). The files and rows stay in --folder for the next run (delete it to start over).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Common words the tiny tokenizer knows whole, and syllables of made-up ones, which it splits finely.
WORDS = " ".join(
    (
        "the quick brown fox jumps over lazy dog what is capital of france paris how many legs does a spider",
        "have eight who wrote play hamlet boiling point water sea level please answer question briefly sure",
        "here thank you model learns from examples training validation test data learning rate batch size",
    )
).split(" ")
SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sha", "vo", "pe", "dri", "nul", "qua", "zet", "bo", "fi", "gra", "ux"]
_made_up = random.Random(1)
VOCABULARY = WORDS * 12 + ["".join(_made_up.choices(SYLLABLES, k=_made_up.randint(1, 3))) for _ in range(2000)]


TEXTS = {
    # Four in five words made up: the tiny tokenizer splits them into many short tokens (the costly case).
    "made-up": VOCABULARY,
    # Only the common words, which the tokenizer knows whole, as a real tokenizer knows most words of real text.
    "plain": WORDS,
}


def chat_row(rng: random.Random, vocabulary: list[str] = VOCABULARY) -> dict:
    """One generated conversation of words drawn from `vocabulary`."""

    def text(words: int) -> str:
        return " ".join(rng.choices(vocabulary, k=words))

    messages = [{"role": "system", "content": "You are a helpful assistant."}] if rng.random() < 0.3 else []
    for _ in range(rng.choice((1, 1, 2))):
        messages.append({"role": "user", "content": text(rng.randint(15, 45)) + "?"})
        reply = {"role": "assistant", "content": text(rng.randint(40, 110)) + "."}
        if rng.random() < 0.05:
            reply["weight"] = 0
        messages.append(reply)
    if rng.random() < 0.01:  # now and then one longer than max_seq_length
        messages[-1]["content"] = text(1500)
    return {"messages": messages}


def write_chat_file(path: Path, target_bytes: int, seed: int = 0, vocabulary: list[str] = VOCABULARY) -> Path:
    """Generated rows until the file holds `target_bytes` (written to a temporary name, then renamed)."""
    rng = random.Random(seed)
    staging = path.with_name(f".{path.name}.tmp")
    written = 0
    with staging.open("w") as handle:
        while written < target_bytes:
            line = json.dumps(chat_row(rng, vocabulary)) + "\n"
            handle.write(line)
            written += len(line.encode())
    staging.replace(path)
    return path


def validate(path: Path, folder: Path, model_path: str, processes: int) -> dict:
    """The validation stage on one file, timed: what the validator does once it holds the job."""
    from transformers import AutoTokenizer

    from loraq.storage import sha256_of
    from training.tokenized import tokenize_file

    tokenizer = AutoTokenizer.from_pretrained(model_path)  # as the validator loads it
    sha256 = sha256_of(path)  # recorded at upload: not part of the stage
    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    found = tokenize_file(path, sha256, tokenizer, folder, 2048, False, processes=processes)
    seconds = time.monotonic() - started
    report = found.report
    return {"rows": report["examples"], "tokens": report["tokens"], "validate_s": seconds,
            "tokens_per_s": report["tokens"] / seconds, "tokenized_bytes": found.path.stat().st_size}  # fmt: skip


def tokenizer_floor(path: Path, model_path: str, sample_bytes: int = 4_000_000) -> float:
    """Bytes per second of the tokenizer's own encode (Rust, one thread, nothing converted to Python, no masks)
    on the file's first rows already rendered by the chat template: what one validation process can never
    beat, however little else it does."""
    from transformers import AutoTokenizer

    from loraq.dataset_format import parse_line

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    conversations, size = [], 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if size >= sample_bytes:
                break
            conversations.append(parse_line(number, raw)["messages"])
            size += len(raw)
    texts = tokenizer.apply_chat_template(conversations, tokenize=False)
    backend = tokenizer.backend_tokenizer
    started = time.monotonic()
    for text in texts:  # one at a time: encode_batch would spread over every core
        backend.encode(text, add_special_tokens=False)
    return size / (time.monotonic() - started)


def train(path: Path, output: Path, model_cache: Path) -> dict:
    """`loraq train --max_steps 5` on the validated rows: peak RSS of its process tree, time to the first step."""
    command = [
        sys.executable, "-m", "cli", "train", "--base_model", "loraq-tiny-chat", "--model_cache_dir",
        str(model_cache), "--train_path", str(path), "--output_dir", str(output), "--max_steps", "5",
        "--save_steps", "1000", "--logging_steps", "1", "--gradient_accumulation_steps", "1",
    ]  # fmt: skip
    progress = output / "progress.jsonl"
    progress.unlink(missing_ok=True)
    launched = time.time()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    tree = psutil.Process(process.pid)
    while process.poll() is None:
        peak = max(peak, _tree_rss(tree))
        time.sleep(0.05)
    log = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"loraq train failed:\n{log[-3000:]}")
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    started = next(r["time"] for r in records if r["type"] == "started")
    first_step = next(r["time"] for r in records if r["type"] == "metrics")
    loaded = re.search(r"train file: (reusing the tokenized rows at|tokenized into) \S+ \(([\d.]+) s\)", log)
    return {
        "peak_rss": peak,
        "to_started_s": started - launched,
        "to_first_step_s": first_step - launched,
        "rows_load_s": float(loaded.group(2)) if loaded else None,
        "reused": bool(loaded and loaded.group(1).startswith("reusing")),
    }


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile
            total += member.memory_info().rss
    return total


def main() -> None:
    from loraq.settings import get_settings
    from training.tiny_model import model_source

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 50], help="File sizes in MB (default: 5 50)")
    parser.add_argument("--processes", type=int, default=None,
                        help="Validation processes (default: LORAQ_VALIDATOR_PROCESSES, else the cores)")  # fmt: skip
    parser.add_argument("--folder", type=Path, default=Path("/tmp/loraq-data-scale"), help="Working folder")
    parser.add_argument("--no-train", action="store_true", help="Only the validation stage")
    parser.add_argument("--text", choices=sorted(TEXTS), default="made-up",
                        help="made-up: mostly made-up words, finely split (default); plain: common words")  # fmt: skip
    args = parser.parse_args()
    processes = args.processes or get_settings().resolved_validator_processes
    args.folder.mkdir(parents=True, exist_ok=True)
    model_cache = args.folder / "models"
    model_path = model_source("loraq-tiny-chat", model_cache)
    results = []
    for size in args.sizes:
        stem = "chat" if args.text == "made-up" else f"chat-{args.text}"
        path = args.folder / f"{stem}-{size}mb.jsonl"
        if not path.exists() or path.stat().st_size < size * 1_000_000:
            started = time.monotonic()
            write_chat_file(path, size * 1_000_000, vocabulary=TEXTS[args.text])
            print(f"generated {path} in {time.monotonic() - started:.0f} s", flush=True)
        output = args.folder / f"train-{stem}-{size}mb"
        row = {"bytes": path.stat().st_size, **validate(path, output / "tokenized", model_path, processes)}
        row["floor_s"] = row["bytes"] / (tokenizer_floor(path, model_path) * processes)
        print(f"validated {size} MB: {json.dumps(row)}", flush=True)
        if not args.no_train:
            row.update(train(path, output, model_cache))
            print(f"trained {size} MB: {json.dumps(row)}", flush=True)
        results.append(row)
    print_table(results, processes)


def print_table(results: list[dict], processes: int) -> None:
    print(f"\nvalidation with {processes} process(es) on {psutil.cpu_count()} cores\n")
    print("| file | rows | tokens | validation | tokens/s | MB/s | tokenizer alone | peak RSS, loraq train "
          "--max_steps 5 | to first step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rss = f"{r['peak_rss'] / 2**20:.0f} MiB" if "peak_rss" in r else "-"
        first = f"{r['to_first_step_s']:.1f} s (rows mapped in {r['rows_load_s']:.2f} s)" if "peak_rss" in r else "-"
        print(f"| {r['bytes'] / 1e6:.0f} MB | {r['rows']:,} | {r['tokens']:,} | {r['validate_s']:.1f} s | "
              f"{r['tokens_per_s'] / 1e6:.2f} M | {r['bytes'] / r['validate_s'] / 1e6:.1f} | "
              f"{r['floor_s']:.0f} s | {rss} | {first} |")  # fmt: skip
    trained = [r for r in results if "peak_rss" in r]
    if len(trained) >= 2:
        low, high = trained[0], trained[-1]
        slope = (high["peak_rss"] - low["peak_rss"]) / (high["tokens"] - low["tokens"])
        print(f"\nRSS slope: {slope:.2f} bytes per token ({(high['peak_rss'] - low['peak_rss']) / 2**20:+.0f} MiB "
              f"from {low['bytes'] / 1e6:.0f} MB to {high['bytes'] / 1e6:.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
