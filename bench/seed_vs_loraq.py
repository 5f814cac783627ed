"""The seed recipe (bench/seed_recipe.py) against `loraq train`, same flags, model and data, one command.

    python bench/seed_vs_loraq.py [--examples 96] [--epochs 3] [--repeats 3]
                                  [--shape tiny|qwen2.5-0.5b|qwen2.5-7b] [--tokens N]
                                  [--speedups auto none all scored_rows,packed_sdpa ...] [--nproc-per-node N]

All run the seed's default flags on the same model and a generated chat dataset (long system and user
prompts, short replies, like most SFT data): the built-in tiny model by default, or a random-initialised
model of Qwen2.5-0.5B's or -7B's shape (bench/gpu.sh). Reported for each: tokens per second over all
tokens processed and over supervised tokens (the seed recipe supervises every token, prompts included;
loraq only the replies), training wall time, peak memory (max RSS of the training process; on a GPU also
peak GPU memory and model FLOPs utilisation, counting LoRA training as 4 x parameters x tokens), and, on
the tiny model, the loss on the assistant tokens of a held-out file, since that is what both adapters
are for. `--speedups` runs loraq once per setting of its speed tricks (training.speedups: `auto`, the
default, is all of them on a CPU and none on CUDA; `none`, `all`, or comma-separated names), so each
trick's gain can be read off against `none`. Timings on a shared machine drift from one minute to the
next, so the recipes run in `--repeats` rounds, one after another within each round; the table shows
medians, and the speed ratio is the median of the rounds' ratios (each recipe against the seed recipe of
the same round). `--nproc-per-node N` trains loraq's recipes on N GPUs (torchrun, DDP; the same global
batch) while the seed recipe keeps one, and MFU is then per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = ["billing", "shipping", "returns", "passwords", "invoices", "warranty", "upgrades", "refunds"]


def make_dataset(count: int, seed: int, context_words: int = 30) -> list[dict]:
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
            for _ in range(context_words)
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


def run(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a training command; returns (wall seconds, peak RSS in MiB (of the launcher, with several
    processes), its output)."""
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[1]} failed; see {log}")
    return time.monotonic() - started, usage.ru_maxrss // 1024, log.read_text()


def token_counts(tokenizer, rows: list[dict]) -> dict[str, int]:
    from training.loss_masks import supervised_count, tokenize_with_mask

    total = supervised = 0
    for row in rows:
        example = tokenize_with_mask(tokenizer, row["messages"])
        total += len(example["input_ids"])
        supervised += supervised_count(example["labels"])
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


# Qwen2.5's published configurations (config.json on the hub), for random-initialised models of their shape.
QWEN25_SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True},
    "qwen2.5-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "tie_word_embeddings": False},
}  # fmt: skip
# Dense bf16 peak FLOP/s by device name (no sparsity).
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L40S": 362.05e12}


def write_shaped_model(folder: Path, shape: str) -> tuple[Path, int]:
    """A random-initialised bf16 model with a Qwen2.5 shape and the tiny model's tokenizer and chat template;
    returns its folder and the parameters that do matrix work per token (all but the input embedding)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from training.tiny_model import write_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(write_tiny_model(folder / "tokenizer-source"))
    config = Qwen2Config(
        **QWEN25_SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    unique = sum(p.numel() for p in model.parameters())
    embedding = config.vocab_size * config.hidden_size
    head = embedding if config.tie_word_embeddings else 0  # a tied head still multiplies every token
    out = folder / shape
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the training processes get the whole GPU
    return out, unique - embedding + head


def sized_dataset(count: int, seed: int, tokenizer, tokens: int | None) -> list[dict]:
    """make_dataset, with each user message grown until the conversations are about `tokens` long."""
    if tokens is None:
        return make_dataset(count, seed)
    words = 30
    for _ in range(8):
        sample = make_dataset(4, seed, context_words=words)
        length = max(token_counts(tokenizer, [row])["all"] for row in sample)
        words = max(1, int(words * (tokens - 8) / length))
    return make_dataset(count, seed, context_words=words)


def bare_pass_rate(base_dir: Path, rows: list[dict]) -> float:
    """Tokens per second of bare forward and backward passes, one conversation each, with the seed's LoRA
    settings as PEFT builds them (dropout drawn per element, every position scored) and no optimizer, data
    loading or trainer: what a recipe feeding one example per pass reaches without changing how PEFT and
    the LM head compute."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.loss_masks import tokenize_with_mask

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="sdpa")
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=projections, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora).train()
    examples = [torch.tensor([tokenize_with_mask(tokenizer, r["messages"])["input_ids"]]) for r in rows]
    for ids in examples[:3]:  # warm-up
        model(input_ids=ids, labels=ids).loss.backward()
    started = time.perf_counter()
    for ids in examples:
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(ids.numel() for ids in examples) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=96, help="Training conversations")
    parser.add_argument("--epochs", type=int, default=3, help="--num_train_epochs for both (the seed's 3)")
    parser.add_argument("--shape", choices=["tiny", *QWEN25_SHAPES], default="tiny", help="Model to train")
    parser.add_argument("--tokens", type=int, default=None, help="Grow conversations to about this many tokens")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of all recipes; medians are reported")
    parser.add_argument(
        "--speedups",
        nargs="+",
        default=["auto"],
        help="loraq's speedups settings, one recipe each (the first also with checkpointing on): auto, none, "
        "all, or comma-separated names (training.speedups)",
    )
    parser.add_argument(
        "--nproc-per-node", type=int, default=1, help="GPUs (processes) loraq's recipes train on; the seed's uses one"
    )
    parser.add_argument("--bare-pass", nargs=2, metavar=("MODEL", "JSONL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_pass:
        from loraq.dataset_format import read_examples

        model_dir, data = args.bare_pass
        print(f"bare_pass_tokens_per_second={bare_pass_rate(Path(model_dir), read_examples(data)):.1f}")
        return 0

    from transformers import AutoTokenizer

    from training.tiny_model import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="loraq-seed-bench-"))
    if args.shape == "tiny":
        base, flop_params = write_tiny_model(folder / "base"), None
    else:
        base, flop_params = write_shaped_model(folder, args.shape)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = sized_dataset(args.examples, 1, tokenizer, args.tokens)
    train = write_jsonl(folder / "train.jsonl", rows)
    held_out_rows = sized_dataset(16, 2, tokenizer, args.tokens) if args.shape == "tiny" else None
    flags = ["--base_model", str(base), "--train_path", str(train), "--num_train_epochs", str(args.epochs)]
    # The seed's defaults for everything else: lr 1e-4, batch 1 x grad-accum 4, max length 2048, r 16, ...

    counts = token_counts(tokenizer, rows)
    rounds = [
        run_round(flags, folder, counts, args.epochs, number, args.speedups, args.nproc_per_node)
        for number in range(args.repeats)
    ]
    results = {name: median_result([r[name] for r in rounds]) for name in rounds[0]}
    for r in results.values():
        r["loss"] = held_out_loss(base, r["adapter"], held_out_rows) if held_out_rows else None
    bare_rate = None
    if args.shape == "tiny":  # in a fresh process, like the recipes (the models loaded here slow this one)
        _, _, output = run(
            [sys.executable, "bench/seed_vs_loraq.py", "--bare-pass", str(base), str(train)], folder / "bare.log"
        )
        bare_rate = float(re.findall(r"bare_pass_tokens_per_second=([\d.]+)", output)[-1])
    print_results(args, results, flop_params, bare_rate)
    print(f"(data and logs in {folder})")
    return 0


def loraq_recipes(speedups: list[str]) -> list[tuple[str, list[str]]]:
    """(name, extra flags) of each loraq run: one per speedups setting, with activation checkpointing only
    when memory needs it, and the first setting again with checkpointing forced on, the seed recipe's
    memory-saving setting under TRL 1.x."""
    recipes = []
    for setting in speedups:
        name = "loraq train" if setting == "auto" else f"loraq train, speedups {setting}"
        recipes.append((name, [] if setting == "auto" else ["--speedups", setting]))
    first_name, first_flags = recipes[0]
    return [*recipes, (f"{first_name}, checkpointing on", [*first_flags, "--gradient_checkpointing", "true"])]


def run_round(
    flags: list[str], folder: Path, counts: dict, epochs: int, number: int, speedups: list[str], nproc: int = 1
) -> dict:
    """One run of each recipe, one after the other: the seed recipe (on the first visible GPU: with several
    visible, the Trainer would wrap it in DataParallel), then loraq's (loraq_recipes), on `nproc` GPUs."""
    seed_dir = folder / f"seed-{number}"
    first_gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    seed_wall, seed_rss, seed_log = run(
        [sys.executable, "bench/seed_recipe.py", *flags, "--output_dir", str(seed_dir)],
        seed_dir.with_suffix(".log"),
        dict(os.environ, CUDA_VISIBLE_DEVICES=first_gpu),
    )
    results = {
        "seed recipe": {
            "runtime": float(re.findall(r"'train_runtime': '?([\d.]+)", seed_log)[-1]),
            "wall": seed_wall, "rss": seed_rss, "all": counts["all"] * epochs, "supervised": counts["all"] * epochs,
            "gpu": _found(r"peak_device_memory_mib=(\d+)", seed_log), "adapter": seed_dir,
        }
    }  # fmt: skip
    for name, extra in loraq_recipes(speedups):
        if nproc > 1:
            name, extra = f"{name}, {nproc} GPUs", [*extra, "--nproc_per_node", str(nproc)]
        out = folder / f"{re.sub(r'[^A-Za-z0-9_]+', '_', name)}-{number}"
        wall, rss, _ = run(
            [sys.executable, "-m", "cli", "train", *flags, *extra, "--output_dir", str(out)],
            out.with_suffix(".log"),
        )
        metrics = json.loads((out / "loraq.json").read_text())["metrics"]
        results[name] = {
            "runtime": metrics["train_runtime_s"], "wall": wall, "rss": rss, "all": counts["all"] * epochs,
            "supervised": counts["supervised"] * epochs, "gpu": metrics.get("peak_device_memory_mib"), "adapter": out,
            "devices": nproc,
        }  # fmt: skip
    seed = results["seed recipe"]
    for result in results.values():
        result["ratios"] = [seed["runtime"] / result["runtime"]]
    return results


def median_result(runs: list[dict]) -> dict:
    """Each figure's median over the rounds (the adapter of the last round); `ratios` keeps every round's
    speed ratio to the seed recipe of the same round."""
    merged = dict(runs[-1])
    for key in ("runtime", "wall", "rss", "gpu"):
        if runs[-1][key] is not None:
            merged[key] = statistics.median_low(r[key] for r in runs)
    merged["ratios"] = [ratio for r in runs for ratio in r["ratios"]]
    return merged


def _found(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def print_results(args, results: dict, flop_params: int | None, bare_rate: float | None) -> None:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPUs"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), None)
    mean_tokens = results["seed recipe"]["all"] // (args.examples * args.epochs)
    print(f"\n{args.examples} conversations (~{mean_tokens} tokens) x {args.epochs} epochs, {args.shape} model, "
          f"seed default flags, {device}\n")  # fmt: skip
    print("| recipe | tokens/s (all) | tokens/s (supervised) | training s | wall s | peak RSS MiB "
          "| peak GPU MiB | MFU | held-out loss |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        speed = r["all"] / r["runtime"]
        devices = r.get("devices", 1)
        mfu = f"{4 * flop_params * speed / (peak * devices):.1%}" if flop_params and peak else "n/a"
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "n/a"
        print(
            f"| {name} | {speed:.0f} | {r['supervised'] / r['runtime']:.0f} | {r['runtime']:.1f} | {r['wall']:.1f} "
            f"| {r['rss']} | {r['gpu'] if r['gpu'] is not None else 'n/a'} | {mfu} "
            f"| {loss} |"
        )
    if bare_rate:
        print(f"| reference: bare PEFT forward+backward, one conversation per pass | {bare_rate:.0f} | | | | | | | |")
    print()
    seed = results["seed recipe"]
    for name, r in results.items():
        if name == "seed recipe":
            continue
        each = ", ".join(f"{ratio:.2f}x" for ratio in r["ratios"])
        ratio = statistics.median(r["ratios"])  # paired within each round, so drift between rounds cancels
        line = f"{name} / seed recipe: {ratio:.2f}x tokens per second (rounds: {each})"
        line += f", peak RSS {r['rss'] - seed['rss']:+d} MiB"
        if r["gpu"] is not None and seed["gpu"] is not None:
            line += f", peak GPU memory {r['gpu'] - seed['gpu']:+d} MiB"
        if r["loss"] is not None:
            line += f", held-out assistant loss {r['loss']:.3f} vs {seed['loss']:.3f}"
        print(line)
    if bare_rate:
        print(f"bare PEFT passes / seed recipe: {bare_rate / seed['all'] * seed['runtime']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
