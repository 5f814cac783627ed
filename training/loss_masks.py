"""Assistant-only loss masks for any chat template, derived by incremental rendering.

TRL computes assistant masks only from `{% generation %}` markers, which few model templates have. Here
the conversation is rendered once per assistant turn: the text the template adds between "everything
before this turn, plus the generation prompt" and "everything up to and including this turn" is exactly
the assistant's reply and its end-of-turn marker. Those character spans are mapped onto the tokens of
the whole rendered conversation through the tokenizer's offsets. An assistant message with `weight: 0`
is left out. A template that does not render prefixes consistently cannot be masked this way, and
`MaskError` says so rather than training on wrong labels.
"""

from __future__ import annotations

IGNORE_INDEX = -100


# What a user can do when a template cannot be masked (said by training and by the validation stage).
MASK_REMEDY = "Set hyperparameters.train_on_inputs to true to train on whole conversations."


class MaskError(ValueError):
    """The loss mask cannot be derived for this conversation with this template."""


def supervised_count(labels: list[int]) -> int:
    """Tokens the loss covers. The first token is never predicted, so its label does not count; an example
    with none is skipped by training and reported as such by the validation stage (one rule for both)."""
    return sum(label != IGNORE_INDEX for label in labels[1:])


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its supervised assistant turns."""
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True) if index else ""
        upto = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not upto.startswith(before) or not full.startswith(upto):
            raise MaskError(
                "the chat template does not render a conversation's prefix the same way as the whole "
                f"conversation (assistant turn {index}), so its loss mask cannot be derived"
            )
        if message["content"] not in upto[len(before) :]:
            raise MaskError(f"the chat template rewrites assistant turn {index}'s content")
        end = len(upto)
        while end > len(before) and upto[end - 1].isspace():  # the newline after the end-of-turn token
            end -= 1
        spans.append((len(before), end))
    return full, spans


def tokenize_with_mask(
    tokenizer, messages: list[dict], max_length: int | None = None, train_on_inputs: bool = False
) -> dict[str, list[int]]:
    """`input_ids` of the rendered conversation and `labels` with everything but the assistant replies
    (and their end-of-turn tokens) set to -100; every token is a label with `train_on_inputs`."""
    if train_on_inputs:
        input_ids = tokenizer(_render(tokenizer, messages, False), add_special_tokens=False)["input_ids"][:max_length]
        return {"input_ids": input_ids, "labels": list(input_ids)}
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(span_start <= start < span_end for span_start, span_end in spans):
            labels[position] = input_ids[position]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def supervised_text(tokenizer, example: dict[str, list[int]]) -> str:
    """The tokens the loss sees, decoded (for tests and the validation report)."""
    return tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]
    )
