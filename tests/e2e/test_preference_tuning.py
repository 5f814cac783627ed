"""Preference tuning (DPO) with the official `openai` SDK on the built-in tiny model: the adapter learns to
give the preferred answers the base model never gives, and preference accuracy rises in the metrics events."""

from __future__ import annotations

import io
import json
import tarfile
import time

import openai
import pytest

from tests.facts import PREFER, PREFERENCES, chat_rows, greedy_answers, preference_rows, write_jsonl

pytestmark = pytest.mark.e2e


def _wait(client: openai.OpenAI, job_id: str, timeout: float = 300):  # a 2-core machine shared with other runs
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)
    return job


def _adapter_answers(service, job_id: str, folder) -> tuple[list[str], list[str]]:
    """Greedy answers to the preference questions: the base model's, and with the job's downloaded adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.tiny_model import write_tiny_model

    with service.client() as http:
        archive = http.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")
    base_dir = write_tiny_model(folder / "base")  # deterministic: the base the server trained on
    tokenizer = AutoTokenizer.from_pretrained(folder / job_id)
    questions = [question for question, _, _ in PREFERENCES]
    base_answers = greedy_answers(AutoModelForCausalLM.from_pretrained(base_dir), tokenizer, questions)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder / job_id)
    return base_answers, greedy_answers(tuned, tokenizer, questions)


def test_dpo_job_teaches_the_preferred_answers(service, tmp_path):
    client = service.openai()
    with write_jsonl(tmp_path / "preferences.jsonl", preference_rows()).open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.to_dict()["format"] == "preference"

    job = client.fine_tuning.jobs.create(
        model="loraq-tiny-chat",
        training_file=uploaded.id,
        suffix="prefer",
        method={"type": "dpo", "dpo": {"hyperparameters": {**PREFER, "logging_steps": 4}}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == PREFER["beta"]
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.fine_tuned_model == f"ft:loraq-tiny-chat:prefer:{job.id}"
    assert job.trained_tokens == job.to_dict()["estimated_tokens"]  # the validation stage counted as TRL trains

    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))
    metrics = [e.data for e in events if e.type == "metrics"]
    accuracy = [m["rewards_accuracy"] for m in metrics]
    # Step 1 trains a zero-initialised adapter (the policy is the reference, every margin 0): the first figure
    # is below 1 whatever happens after, and by the end every pair's preferred output has the higher reward.
    assert len(accuracy) == 20 and accuracy[0] < 0.8 and accuracy[-1] == 1.0
    assert metrics[-1]["rewards_margin"] > metrics[0]["rewards_margin"]
    assert any("preference accuracy=1.00" in e.message for e in events if e.type == "metrics")
    report = next(e.data for e in events if e.data and e.data.get("file") == "training" and "format" in e.data)
    assert report["format"] == "preference" and report["usable_examples"] == len(PREFERENCES)
    assert report["dropped_examples"]["count"] == 0 and report["chosen_tokens"] > 0
    token_reports = client.files.retrieve(uploaded.id).to_dict()["token_reports"]
    assert token_reports["loraq-tiny-chat"] == {k: v for k, v in report.items() if k != "file"}

    base, tuned = _adapter_answers(service, job.id, tmp_path)
    preferred = [answer for _, answer, _ in PREFERENCES]
    assert not set(base) & set(preferred)  # the base model gives none of them
    taught = [q for q, want, got in zip(PREFERENCES, preferred, tuned, strict=True) if got == want]
    assert len(taught) >= 7, list(zip(preferred, tuned, strict=True))


def test_wrong_format_for_the_method_is_a_400_with_the_sdk(service):
    client = service.openai()
    lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
    chat = client.files.create(file=("chat.jsonl", io.BytesIO(lines(chat_rows()))), purpose="fine-tune")
    prefs = client.files.create(file=("prefs.jsonl", io.BytesIO(lines(preference_rows()))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as supervised_on_preferences:
        client.fine_tuning.jobs.create(model="loraq-tiny-chat", training_file=prefs.id)
    assert supervised_on_preferences.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as dpo_on_chat:
        client.fine_tuning.jobs.create(model="loraq-tiny-chat", training_file=chat.id, method={"type": "dpo"})
    assert dpo_on_chat.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as malformed:
        bad = lines(preference_rows()[:2]) + b'{"input": {"messages": []}}\n'
        client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    assert "line 3: `input.messages` must be a non-empty list" in malformed.value.body["message"]
