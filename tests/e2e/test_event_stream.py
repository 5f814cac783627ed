"""GET /v1/fine_tuning/jobs/{id}/events?stream=true against the real service: replay after an id (header or
query), then live events with no gaps or repeats across reconnects, `event: end` with the job and the stream
closed, heartbeats, another owner's 404, and the per-owner limit's 429."""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.e2e.calls import create_job, events, read_stream, sse_frames, stream_events, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e

STREAM_LIMIT = 4  # LORAQ_MAX_EVENT_STREAMS_PER_OWNER of the test deployments (tests/deployments.py)
QUICK = {"n_epochs": 1, "gradient_accumulation_steps": 1}


def finished_job(client) -> dict:
    job = create_job(client, upload_ok(client, chat_rows()[:2]), hyperparameters=QUICK).json()
    finished = wait_for(client, job["id"])
    assert finished["status"] == "succeeded", finished["error"]
    return finished


def test_replay_after_an_id_by_header_or_query_then_end_and_close(client):
    job = finished_job(client)
    written = events(client, job["id"])  # oldest first
    ids = [e["id"] for e in written]
    with stream_events(client, job["id"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        replayed, rest = read_stream(response)  # returns only once the server has closed the stream
    assert [f["data"] for f in replayed] == written  # each item as the list endpoint gives it
    assert [f["id"] for f in replayed] == ids
    assert [f["event"] for f in rest] == ["end"]  # the last frame
    assert rest[0]["data"] == client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()

    for resume in ({"after": ids[2]}, {"last_event_id": ids[2]}, {"last_event_id": ids[2], "after": ids[0]}):
        with stream_events(client, job["id"], **resume) as response:
            replayed, rest = read_stream(response)
        assert [f["id"] for f in replayed] == ids[3:], resume  # the header wins over the query
        assert rest[0]["event"] == "end"

    other = finished_job(client)
    for cursor in ("ftevent-nosuchevent", events(client, other["id"])[0]["id"]):
        response = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"stream": "true", "after": cursor})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_cursor"


def test_reconnects_while_events_are_written_miss_and_repeat_nothing(client):
    """Hang up after every metrics event, mid-training, and resume from the last id received."""
    hp = {"n_epochs": 4, "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 8}
    job = create_job(client, upload_ok(client, chat_rows()), hyperparameters=hp).json()
    received, last, reconnects, end = [], None, 0, None
    deadline = time.monotonic() + 240
    while end is None:
        assert time.monotonic() < deadline, f"no end after {reconnects} reconnects"
        with stream_events(client, job["id"], last_event_id=last) as response:
            assert response.status_code == 200, response.read()
            for frame in sse_frames(response):
                if "comment" in frame:
                    continue
                if frame["event"] == "end":
                    end = frame["data"]
                    break
                received.append(frame["data"])
                last = frame["id"]
                if frame["data"]["type"] == "metrics":
                    reconnects += 1
                    break
    ids = [e["id"] for e in received]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert set(ids) == {e["id"] for e in events(client, job["id"])}, "an event was missed"
    assert end["status"] == "succeeded" and reconnects >= 20


def test_another_owner_gets_404(service, client):
    job = create_job(client, upload_ok(client, chat_rows()[:2]), hyperparameters=QUICK).json()
    with service.client(service.new_key("stream-outsider")) as outsider:
        response = outsider.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"stream": "true"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "fine-tuning_job_not_found"
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")


def test_per_owner_limit_429_heartbeats_and_end_on_cancel(service):
    with service.client(service.new_key("stream-limit")) as owner, contextlib.ExitStack() as streams:
        hp = {"n_epochs": 50, "gradient_accumulation_steps": 1}
        job = create_job(owner, upload_ok(owner, chat_rows()), hyperparameters=hp).json()
        opened = [streams.enter_context(stream_events(owner, job["id"])) for _ in range(STREAM_LIMIT)]
        assert all(r.status_code == 200 for r in opened)

        refused = owner.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"stream": "true"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "too_many_event_streams"
        assert owner.get(f"/v1/fine_tuning/jobs/{job['id']}/events").status_code == 200  # the list is not limited

        frames = sse_frames(opened[0])
        assert any("comment" in frame and frame["comment"] == "ping" for frame in frames)  # 1 s heartbeats here

        opened.pop(0).close()  # a client hanging up frees its slot
        deadline = time.monotonic() + 10
        while True:
            reopened = streams.enter_context(stream_events(owner, job["id"]))
            if reopened.status_code == 200:
                break
            assert reopened.status_code == 429 and time.monotonic() < deadline
            time.sleep(0.3)
        opened.append(reopened)

        assert owner.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        for response in opened:
            _, rest = read_stream(response)
            assert [(f["event"], f["data"]["status"]) for f in rest] == [("end", "cancelled")]
