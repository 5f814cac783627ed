"""The seed document's training script, ported faithfully: its settings as written, with only the
changes today's libraries (TRL 1.x, transformers 5.x) or a CPU force. Used as the baseline by
bench/seed_vs_loraq.py.

Forced changes, each marked `# forced:` below:
- `tokenizer=` is `processing_class=` in TRL 1.x;
- `warmup_ratio` is gone: `warmup_steps=0.03` reads as a ratio;
- passing a PeftModel *and* `peft_config` raises: the model is wrapped once, as the seed does, and
  `peft_config` is not passed again;
- `paged_adamw_32bit` needs bitsandbytes and CUDA: plain AdamW without them;
- `torch_dtype` is `dtype`, and float16 is not trainable on a CPU: float32 there;
- `device_map="auto"` only with CUDA;
- TRL 1.x's SFTConfig asks for bf16 by default: not on a CPU.
Everything else (pre-rendered text with the prompt in the loss, no packing, the flags) is the seed's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

HAVE_BNB = importlib.util.find_spec("bitsandbytes") is not None


def load_jsonl(path: Path) -> list[dict]:
    items = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                items.append(json.loads(line))
    return items


def build_chat_text(example: dict, tokenizer) -> str:
    return tokenizer.apply_chat_template(example["messages"], tokenize=False, add_generation_prompt=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base_model", default="Qwen/Qwen2.5-7B-Instruct")
    parser.add_argument("--train_path", required=True)
    parser.add_argument("--eval_path", default="")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_seq_length", type=int, default=2048)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--num_train_epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=4)
    parser.add_argument("--save_steps", type=int, default=100)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--lora_alpha", type=int, default=32)
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    args = parser.parse_args()

    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    cuda = torch.cuda.is_available()

    tokenizer = AutoTokenizer.from_pretrained(args.base_model, trust_remote_code=True)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"

    train_ds = Dataset.from_list(load_jsonl(Path(args.train_path)))
    train_ds = train_ds.map(lambda ex: {"text": build_chat_text(ex, tokenizer)}, remove_columns=train_ds.column_names)
    eval_ds = None
    if args.eval_path:
        eval_items = load_jsonl(Path(args.eval_path))
        if eval_items:
            eval_ds = Dataset.from_list(eval_items)
            eval_ds = eval_ds.map(
                lambda ex: {"text": build_chat_text(ex, tokenizer)}, remove_columns=eval_ds.column_names
            )

    model = AutoModelForCausalLM.from_pretrained(
        args.base_model,
        dtype=torch.float16 if cuda else torch.float32,  # forced: `torch_dtype` renamed; no fp16 training on CPU
        device_map="auto" if cuda else None,  # forced: device_map needs an accelerator
        trust_remote_code=True,
    )
    peft_config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )  # fmt: skip
    model = get_peft_model(model, peft_config)
    model.print_trainable_parameters()

    training_args = SFTConfig(
        output_dir=args.output_dir,
        dataset_text_field="text",
        max_length=args.max_seq_length,
        packing=False,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        optim="paged_adamw_32bit" if cuda and HAVE_BNB else "adamw_torch",  # forced: paged needs CUDA + bitsandbytes
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        learning_rate=args.learning_rate,
        warmup_steps=0.03,  # forced: warmup_ratio is gone; a float below 1 is a ratio
        lr_scheduler_type="cosine",
        seed=args.seed,
        report_to=[],
        bf16=cuda,  # forced: TRL 1.x defaults to bf16, which a CPU cannot train in
    )
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,  # forced: `tokenizer=` is `processing_class=`
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        args=training_args,  # forced: no `peft_config=` again for an already wrapped model
    )
    print("Starting chat SFT training...")
    trainer.train()

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if cuda:  # measurement only (read by bench/seed_vs_loraq.py), not part of the seed's script
        print(f"peak_device_memory_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}")


if __name__ == "__main__":
    main()
