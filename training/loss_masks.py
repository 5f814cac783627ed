"""Assistant-only loss masks for any chat template, derived by incremental rendering.

TRL computes assistant masks only from `{% generation %}` markers, which few model templates have. Here
the conversation is rendered once per assistant turn: the text the template adds between "everything
before this turn, plus the generation prompt" and "everything up to and including this turn" is exactly
the assistant's reply and its end-of-turn marker. Those character spans are mapped onto the tokens of
the whole rendered conversation through the tokenizer's offsets. An assistant message with `weight: 0`
is left out. A template that does not render prefixes consistently cannot be masked this way, and
`MaskError` says so rather than training on wrong labels.

That costs two extra renders per assistant turn. Most templates write the same text around every reply
(the generation prompt before it, an end-of-turn marker after it), so `reply_markers` learns those two
strings once per template from probe conversations, keeping them only if they give exactly the
incremental spans on every probe; `conversation_spans` then finds each reply in ONE render. A reply it
cannot find exactly once in its place falls back to the incremental render, which stays the reference.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

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


# --------------------------------------------------------------------------- one render per conversation


@dataclass(frozen=True)
class ReplyMarkers:
    """What a template writes around every assistant reply: `header` before it (its generation prompt) and
    `footer` after it (the end-of-turn marker, without the whitespace that follows)."""

    header: str
    footer: str

    def spans(self, text: str, messages: list[dict]) -> list[tuple[int, int]] | None:
        """The supervised spans of `text` (the whole conversation rendered), or None where a reply is not
        found exactly once after the previous one (then only the incremental render can tell)."""
        spans, cursor = [], 0
        for message in messages:
            if message["role"] != "assistant":
                continue
            turn = self.header + message["content"] + self.footer
            at = text.find(turn, cursor)
            if at < 0 or text.find(turn, at + 1) >= 0:
                return None
            start, end = at + len(self.header), at + len(turn)
            cursor = end
            if message.get("weight", 1) == 0:
                continue
            while end > start and text[end - 1].isspace():  # as assistant_spans strips
                end -= 1
            spans.append((start, end))
        return spans


_PROBE_REPLY = "Probe reply one,\nacross two lines."
PROBES = [
    [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": _PROBE_REPLY}],
    [
        {"role": "system", "content": "Probe system prompt."},
        {"role": "user", "content": "First probe question?"},
        {"role": "assistant", "content": "First probe answer."},
        {"role": "user", "content": "Second probe question?"},
        {"role": "assistant", "content": "Second probe answer."},
    ],
    [
        {"role": "user", "content": "Say A."},
        {"role": "assistant", "content": "B", "weight": 0},
        {"role": "user", "content": "No, say A."},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Once more."},
        {"role": "assistant", "content": "A again."},
    ],
]
_learned: dict[str, ReplyMarkers | None] = {}


def reply_markers(tokenizer) -> ReplyMarkers | None:
    """The template's reply markers, learned once per template; None when the template does not write the
    same text around every reply (every conversation is then rendered incrementally)."""
    key = json.dumps([tokenizer.chat_template, tokenizer.special_tokens_map], sort_keys=True, default=str)
    if key not in _learned:
        _learned[key] = _learn_markers(tokenizer)
    return _learned[key]


def _learn_markers(tokenizer) -> ReplyMarkers | None:
    try:
        question = PROBES[0][:1]
        bare, prompted = _render(tokenizer, question, False), _render(tokenizer, question, True)
        text, [(start, end)] = assistant_spans(tokenizer, PROBES[0])
        reply = text[start:end]
        if not prompted.startswith(bare) or not reply.startswith(_PROBE_REPLY):
            return None
        markers = ReplyMarkers(header=prompted[len(bare) :], footer=reply[len(_PROBE_REPLY) :])
        for probe in PROBES:
            text, reference = assistant_spans(tokenizer, probe)
            if markers.spans(text, probe) != reference:
                return None
        return markers
    except Exception:  # a template that fails on a probe is rendered incrementally (which says why)
        return None


def conversation_spans(tokenizer, messages: list[dict], text: str, markers: ReplyMarkers | None) -> list:
    """assistant_spans' spans of `text` (the conversation rendered): found in it by the template's markers
    where they place every reply, else by the incremental render."""
    spans = markers.spans(text, messages) if markers is not None else None
    return spans if spans is not None else assistant_spans(tokenizer, messages)[1]


def span_labels(input_ids: np.ndarray, offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """tokenize_with_mask's labels, vectorised: a token is supervised when its (non-empty) character range
    starts inside a span; spans are ordered and disjoint, so only the last one starting before it can hold it."""
    labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
    if not spans or not len(input_ids):
        return labels
    bounds = np.asarray(spans, dtype=np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    index = np.searchsorted(bounds[:, 0], starts, side="right") - 1
    inside = (index >= 0) & (starts < bounds[np.maximum(index, 0), 1]) & (ends > starts)
    labels[inside] = input_ids[inside]
    return labels


def encode_with_masks(tokenizer, conversations: list[list[dict]], train_on_inputs: bool) -> list[Any]:
    """(input_ids, labels) as int64 arrays, whole (not truncated), for a batch of conversations: one batched
    tokenizer call. Exactly tokenize_with_mask's, which a test checks for every template shape; MaskError
    carries `index`, the first conversation that cannot be masked (the ones before it are not encoded)."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=False)  # a batch
    spans, markers = [], reply_markers(tokenizer)
    for index, (messages, text) in enumerate(zip(conversations, texts, strict=True)):
        if train_on_inputs:
            break
        try:
            spans.append(conversation_spans(tokenizer, messages, text, markers))
        except MaskError as exc:
            exc.index = index  # type: ignore[attr-defined]
            raise
    encoded = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=not train_on_inputs,
        return_attention_mask=False, return_token_type_ids=False, verbose=False,  # long rows are reported, not warned
    )  # fmt: skip
    ids = [np.asarray(row, dtype=np.int64) for row in encoded["input_ids"]]
    if train_on_inputs:
        return [(row, row.copy()) for row in ids]
    return [
        (row, span_labels(row, _offsets_array(offsets), found))
        for row, offsets, found in zip(ids, encoded["offset_mapping"], spans, strict=True)
    ]


def _offsets_array(offsets: list[tuple[int, int]]) -> np.ndarray:
    # np.fromiter over the flattened pairs: several times faster than np.asarray of a list of tuples.
    return np.fromiter(itertools.chain.from_iterable(offsets), np.int64, 2 * len(offsets)).reshape(-1, 2)


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
