"""Shared fixtures.

`service` runs the real thing and is parametrised over three deployments: the embedded mode (`loraq up`:
API process, Celery worker process, embedded Redis server, SQLite), the production shape (PostgreSQL,
a standalone redis-server, `loraq api`, `loraq worker`) on a shared folder, and the same on S3 storage
(`rclone serve s3`). Tests drive it over HTTP.
"""

from __future__ import annotations

import json

import pytest

from tests.deployments import API_KEY, embedded, production
from tests.servers import S3Server, free_port

__all__ = ["API_KEY", "BROKEN_WEIGHTS_MODEL", "LOCAL_MODEL", "UNMASKABLE_MODEL", "free_port"]

LOCAL_MODEL = "tiny-local"
# A chat template that renders only the last message: no assistant-only loss mask can be derived from it.
UNMASKABLE_MODEL = "tiny-unmaskable-template"
UNMASKABLE_TEMPLATE = "{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}"
# Config and tokenizer intact, weights file corrupt: it passes the validation stage (which reads only those)
# and fails when the training process loads the weights.
BROKEN_WEIGHTS_MODEL = "tiny-broken-weights"


@pytest.fixture(scope="session")
def operator_models(tmp_path_factory) -> dict[str, str]:
    """Operator-listed base models from local folders (loaded through the same code as a hub id): the tiny
    model, the tiny model with a chat template no loss mask can be derived from, and one with corrupt weights."""
    from transformers import AutoTokenizer

    from training.tiny_model import write_tiny_model

    folder = tmp_path_factory.mktemp("operator-models")
    local_model = write_tiny_model(folder / LOCAL_MODEL)
    unmaskable = write_tiny_model(folder / UNMASKABLE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(unmaskable)
    tokenizer.chat_template = UNMASKABLE_TEMPLATE
    tokenizer.save_pretrained(unmaskable)
    broken = write_tiny_model(folder / BROKEN_WEIGHTS_MODEL)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    models = {
        LOCAL_MODEL: {"source": str(local_model)},
        UNMASKABLE_MODEL: {"source": str(unmaskable)},
        BROKEN_WEIGHTS_MODEL: {"source": str(broken)},
    }
    return {"LORAQ_BASE_MODELS": json.dumps(models)}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (`rclone serve s3`) for the session; tests make their own buckets."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


PRODUCTION = "postgres+redis-server"
S3_DEPLOYMENT = "postgres+redis-server+s3"
# Cases whose production-shape variant adds little to the embedded one's (the same routes, checks and client
# code; nothing in them differs by database or broker), so that variant runs only with `-m slow`. The cases
# where the deployments differ keep both in the default run: a trained job end to end and its downloads, the
# SDK, event streams replayed (LISTEN/NOTIFY on PostgreSQL, polling on SQLite), idempotency keys and limits
# (unique constraints), owner isolation of every route. Cancel and pause are status changes whose rules run on
# PostgreSQL in tests/models/test_job_state.py (and the fault suite runs on it), so their e2e cases run on the
# embedded deployment by default.
PRODUCTION_VARIANT_SLOW = {
    "tests.e2e.test_cancel::test_cancel_running_then_queued",
    "tests.e2e.test_pause_resume::test_pause_frees_the_worker_and_resume_continues_exactly",
    "tests.e2e.test_bad_input",
    "tests.e2e.test_validation_stage",
    "tests.e2e.test_continued_training",  # the API is the same; the S3 variant covers fetching the parent
    "tests.e2e.test_failures",
    "tests.e2e.test_preference_tuning",  # DPO's path is the same code on every deployment
    "tests.e2e.test_embedded_mode::test_operator_listed_local_model_trains",
    "tests.e2e.test_event_stream::test_reconnects_while_events_are_written_miss_and_repeat_nothing",
    "tests.e2e.test_event_stream::test_per_owner_limit_429_heartbeats_and_end_on_cancel",
    "tests.e2e.test_event_stream::test_another_owner_gets_404",
    "tests.e2e.test_cancel::test_cancelling_a_finished_job_is_a_400",
    "tests.e2e.test_cancel::test_pollers_see_a_change_at_once_and_never_go_back",
    "tests.e2e.test_webhooks::test_one_signed_delivery_per_event_for_a_succeeded_and_a_cancelled_job",
    "tests.e2e.test_webhooks::test_retries_after_a_500_and_while_the_receiver_is_down",
    "tests.cli.test_client_commands",
    "tests.security.test_api_fuzz",
    "tests.security.test_malformed_datasets",
}
# On the S3 deployment by default: upload, validation, training, checkpoints, downloads with Range and ETag, and
# continued training from a checkpoint fetched from the bucket (tests/faults/test_object_storage_faults.py adds
# resumption and outages). Its other variants are `slow`: the same API over the same storage interface, already
# run on the others.
S3_BY_DEFAULT = {"test_train_and_download.py", "test_continued_training.py::test_continues_from_a_checkpoint"}


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        deployment = callspec.params.get("service") if callspec is not None else None
        case = f"{item.path.name}::{item.originalname}"
        if deployment == S3_DEPLOYMENT and item.path.name not in S3_BY_DEFAULT and case not in S3_BY_DEFAULT:
            item.add_marker(pytest.mark.slow)
        module = item.module.__name__
        if deployment == PRODUCTION and (
            module in PRODUCTION_VARIANT_SLOW or f"{module}::{item.originalname}" in PRODUCTION_VARIANT_SLOW
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", params=["sqlite+embedded-redis", PRODUCTION, S3_DEPLOYMENT])
def service(request, tmp_path_factory, operator_models):
    folder = tmp_path_factory.mktemp("deployment")
    if request.param.startswith("sqlite"):
        deployment = embedded(folder, operator_models)
    else:
        deployment = production(folder, operator_models, s3=request.param == S3_DEPLOYMENT)
    yield deployment
    deployment.stop()


@pytest.fixture
def receiver():
    """A local HTTP server that records webhook deliveries (tests/webhook_receiver.py)."""
    from tests.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver().start()
    yield receiver
    receiver.release()
    receiver.stop()


@pytest.fixture
def client(service):
    with service.client() as c:
        yield c
