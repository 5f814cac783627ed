"""The job list's `status` and `metadata[key]=value` filters, in-process on SQLite (the e2e suite runs them on
PostgreSQL too, through the openai SDK: tests/e2e/test_pause_resume.py)."""

from __future__ import annotations

import pytest

from models import Job, JobStatus, job_state
from models.session import session_scope
from tests.api.conftest import auth

ODD_KEY = 'team "core" / $.x[0]'  # quotes, a path-like key: SQLite's JSON path syntax could not name it


@pytest.fixture
def jobs(settings) -> dict[str, str]:
    """Name → id of alice's jobs (oldest first) and one of bob's."""
    rows = {
        "ml-1": ("alice", JobStatus.paused, {"team": "ml", "run": "1"}),
        "ml-2": ("alice", JobStatus.queued, {"team": "ml", "run": "2"}),
        "nlp": ("alice", JobStatus.paused, {"team": "nlp", "run": ""}),
        "bare": ("alice", JobStatus.succeeded, None),
        "odd": ("alice", JobStatus.running, {ODD_KEY: "café"}),
        "bobs": ("bob", JobStatus.paused, {"team": "ml", "run": "1"}),
    }
    with session_scope(settings.resolved_database_url) as session:
        for name, (owner, _, metadata) in rows.items():
            job = Job(id=f"ftjob-filter-{name}", owner=owner, model="m", training_file="file-x", hyperparameters={},
                      seed=0, user_metadata=metadata)  # fmt: skip
            job_state.create_job(session, job)
    with session_scope(settings.resolved_database_url) as session:
        for name, (_, status, _) in rows.items():
            job_state.get_job(session, f"ftjob-filter-{name}").status = status
    return {name: f"ftjob-filter-{name}" for name in rows}


def listed(client, **params) -> list[str]:
    response = client.get("/v1/fine_tuning/jobs", params=params, headers=auth("alice"))
    assert response.status_code == 200, response.text
    return [job["id"].removeprefix("ftjob-filter-") for job in response.json()["data"]]


def test_metadata_pairs_all_match_within_the_callers_jobs(app_client, jobs):
    assert listed(app_client, **{"metadata[team]": "ml"}) == ["ml-2", "ml-1"]  # newest first, no bob's
    assert listed(app_client, **{"metadata[team]": "ml", "metadata[run]": "1"}) == ["ml-1"]
    assert listed(app_client, **{"metadata[run]": ""}) == ["nlp"]  # an empty value matches the empty string
    assert listed(app_client, **{"metadata[team]": "ML"}) == []
    assert listed(app_client, **{f"metadata[{ODD_KEY}]": "café"}) == ["odd"]
    assert listed(app_client, metadata="null") == ["bare"]


def test_status_filters_combine_with_metadata_and_the_cursor(app_client, jobs):
    assert listed(app_client, status="paused") == ["nlp", "ml-1"]
    assert listed(app_client, status="queued,paused") == ["nlp", "ml-2", "ml-1"]
    assert listed(app_client, status="paused", **{"metadata[team]": "ml"}) == ["ml-1"]
    first = app_client.get(
        "/v1/fine_tuning/jobs", params={"status": "queued,paused", "limit": 1}, headers=auth("alice")
    ).json()
    assert [j["id"] for j in first["data"]] == [jobs["nlp"]] and first["has_more"]
    assert listed(app_client, status="queued,paused", after=jobs["nlp"], limit=1) == ["ml-2"]
    assert listed(app_client, status="queued,paused", after=jobs["ml-2"]) == ["ml-1"]
    foreign = app_client.get(
        "/v1/fine_tuning/jobs", params={"status": "paused", "after": jobs["bobs"]}, headers=auth("alice")
    )
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"status": "finished"}, "status"),
        ({"status": "queued,"}, "status"),
        ({"metadata": "ml"}, "metadata"),
        ({"metadata": "null", "metadata[team]": "ml"}, "metadata"),
        ({"metadata[]": "ml"}, "metadata[]"),
        ({"metadata[team]": "x" * 513}, "metadata[team]"),
        ({f"metadata[{'k' * 65}]": "x"}, f"metadata[{'k' * 65}]"),
    ],
)
def test_a_bad_filter_is_a_400_naming_the_parameter(app_client, jobs, params, param):
    response = app_client.get("/v1/fine_tuning/jobs", params=params, headers=auth("alice"))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_key_given_twice_is_a_400(app_client, jobs):
    response = app_client.get("/v1/fine_tuning/jobs?metadata[team]=ml&metadata[team]=nlp", headers=auth("alice"))
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata[team]"
