"""Loss masks derived for any chat template: the tiny model's, and templates shaped like Qwen2.5's and
Llama 3's (written here; no network). The supervised tokens, decoded, must be exactly the assistant
replies with their end-of-turn token."""

from __future__ import annotations

import pytest

from training.loss_masks import MaskError, supervised_text, tokenize_with_mask
from training.tiny_model import build_tiny_tokenizer

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- '<|begin_of_text|>' }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
END_OF_TURN = {"tiny": "<|im_end|>", "qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>"}

SINGLE = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]
WEIGHTED = [
    {"role": "user", "content": "Say A."},
    {"role": "assistant", "content": "B", "weight": 0},
    {"role": "user", "content": "No, say A."},
    {"role": "assistant", "content": "A"},
]


@pytest.fixture(params=["tiny", "qwen2.5", "llama3"])
def template(request):
    tokenizer = build_tiny_tokenizer()
    if request.param == "qwen2.5":
        tokenizer.chat_template = QWEN25_TEMPLATE
    elif request.param == "llama3":
        tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer, END_OF_TURN[request.param]


@pytest.mark.parametrize(
    ("messages", "replies"),
    [(SINGLE, ["Hello there."]), (MULTI, ["Paris.", "Rome."]), (WEIGHTED, ["A"])],
    ids=["single-turn", "multi-turn-with-system", "weight-0"],
)
def test_only_assistant_replies_and_their_end_of_turn_are_supervised(template, messages, replies):
    tokenizer, eot = template
    example = tokenize_with_mask(tokenizer, messages)
    assert len(example["input_ids"]) == len(example["labels"])
    assert supervised_text(tokenizer, example) == "".join(reply + eot for reply in replies)


def test_truncation_keeps_ids_and_labels_aligned(template):
    tokenizer, _ = template
    example = tokenize_with_mask(tokenizer, MULTI, max_length=12)
    assert len(example["input_ids"]) == len(example["labels"]) == 12


def test_a_template_that_rewrites_history_is_refused():
    tokenizer = build_tiny_tokenizer()
    # Renders only the last turn: the prefix of a conversation is not a prefix of the whole.
    tokenizer.chat_template = "{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}"
    with pytest.raises(MaskError, match="cannot be derived"):
        tokenize_with_mask(tokenizer, MULTI)


@pytest.mark.training
def test_training_with_a_template_without_generation_markers(tmp_path):
    """A Qwen2.5-shaped template (no `{% generation %}`): masks are derived and the model still learns."""
    from transformers import AutoTokenizer

    from loraq.job_spec import Hyperparameters
    from tests.facts import chat_rows, write_jsonl
    from training.config import TrainingConfig
    from training.progress import ProgressCallback, ProgressWriter
    from training.sft import build_trainer, train
    from training.tiny_model import write_tiny_model

    base = write_tiny_model(tmp_path / "qwen-shaped")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = QWEN25_TEMPLATE
    tokenizer.save_pretrained(base)
    config = TrainingConfig(
        base_model=str(base),
        train_path=str(write_jsonl(tmp_path / "t.jsonl", chat_rows())),
        output_dir=str(tmp_path / "adapter"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        hyperparameters=Hyperparameters(
            n_epochs=10, learning_rate=2e-3, gradient_accumulation_steps=1, logging_steps=8
        ),
    )
    trainer = build_trainer(config, str(base), ProgressCallback(ProgressWriter(None), None))
    row = trainer.train_dataset[0]
    supervised = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label >= 0])
    assert supervised == chat_rows()[0]["messages"][1]["content"] + "<|im_end|>"
    result = train(config)
    assert result["type"] == "completed" and result["train_loss"] < 4
