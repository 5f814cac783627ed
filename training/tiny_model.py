"""The built-in `loraq-tiny-chat` base model, generated locally and deterministically.

A small random-initialised Qwen2-architecture model and a byte-level BPE tokenizer trained on a fixed
corpus, with a ChatML chat template whose `{% generation %}` markers cover each assistant reply and its
`<|im_end|>`, so assistant-only loss works and the model learns to stop. No network is touched: the
quick start, the tests and CI train it on a CPU in seconds.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from loraq.base_models import TINY_MODEL_NAME
from loraq.storage import staged_directory

__all__ = ["TINY_MODEL_NAME", "ensure_tiny_model", "model_source", "write_tiny_model"]

# Bump when the generated model changes, so a stale cached copy is rebuilt rather than reused.
TINY_MODEL_VERSION = 1

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML. An assistant message with `weight: 0` is rendered outside the generation markers and so is not
# trained on (OpenAI's per-message weight).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if message.get('weight') == 0 -%}"
    "{{ message['content'] + '<|im_end|>' }}"
    "{%- else -%}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- endif -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Fixed text the BPE merges are learned from: chat-shaped English, digits and punctuation.
_CORPUS = """
The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs. Who wrote the play Hamlet? William Shakespeare.
What is the boiling point of water at sea level? It is 100 degrees Celsius, or 212 degrees Fahrenheit.
Please answer the question briefly. Sure, here is the answer. Thank you for your help. You are welcome.
You are a helpful assistant. The user asks a question and the assistant answers it in one sentence.
Python is a programming language. A function takes arguments and returns a value. Lists, dicts and sets.
The model learns from examples. Training, validation and test data. Learning rate, batch size, epochs.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July
August September October November December. One two three four five six seven eight nine ten hundred.
0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 1000 2024 2025 2026 3.14 0.5 -1 + - * / = ( ) [ ] { } < > : ; ' "
Where is the library? It is next to the station. When does the train leave? At seven in the morning.
Why is the sky blue? Because air scatters blue light more than red light. The sun, the moon and the stars.
"""


def build_tiny_tokenizer():
    """Train the byte-level BPE tokenizer on the fixed corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(vocab_size: int, eos_token_id: int, pad_token_id: int):
    """A 4-layer Qwen2 with random weights drawn from a fixed seed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        # Wider than the usual 0.02 so that logits through the frozen, tied embeddings can become confident.
        initializer_range=0.1,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def write_tiny_model(folder: str | Path) -> Path:
    """Write the tiny model and tokenizer to `folder` (replaced atomically if it exists)."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    with staged_directory(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "loraq_tiny.json").write_text(json.dumps({"version": TINY_MODEL_VERSION}))
    return folder


def _is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / "loraq_tiny.json").read_text()).get("version") == TINY_MODEL_VERSION
    except (OSError, ValueError):
        return False


def ensure_tiny_model(folder: str | Path) -> Path:
    """Return `folder`, generating the tiny model there first if it is missing or out of date.

    A lock file serialises the build, so workers that start together build it once.
    """
    folder = Path(folder)
    if _is_current(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(folder):
            write_tiny_model(folder)
    return folder


def model_source(base_model: str, cache_dir: str | Path) -> str:
    """What `from_pretrained` loads for `base_model`: the built-in tiny model's folder under `cache_dir`
    (generated on first use); anything else, a hub id or a local folder, as it is."""
    if base_model == TINY_MODEL_NAME:
        return str(ensure_tiny_model(Path(cache_dir) / TINY_MODEL_NAME))
    return base_model
