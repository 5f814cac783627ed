"""Isolation between owners: every route that takes an id answers 404 to a key that does not own it."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.calls import create_job, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def owners(service):
    alice, bob, admin = service.new_key("alice"), service.new_key("bob"), service.new_key("ops", admin=True)
    with service.client(alice) as client:
        file_id = upload_ok(client, chat_rows()[:2])
        job = create_job(client, file_id, suffix="private", hyperparameters={"n_epochs": 1}).json()
        finished = wait_for(client, job["id"])
        assert finished["status"] == "succeeded"
        checkpoint = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
        webhook = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook"}).json()
    yield {
        "alice": alice,
        "bob": bob,
        "admin": admin,
        "file_id": file_id,
        "job_id": job["id"],
        "model_id": finished["fine_tuned_model"],
        "checkpoint_id": checkpoint["id"],
        "webhook_endpoint_id": webhook["id"],
    }
    with service.client(alice) as client:  # no later test's job of alice's is sent to it
        client.delete(f"/v1/webhook_endpoints/{webhook['id']}")


def test_every_route_with_an_id_is_404_for_another_owner(service, owners):
    with service.client() as anyone:
        paths = anyone.get("/openapi.json").json()["paths"]
    walked = []
    with service.client(owners["bob"]) as bob, service.client(owners["alice"]) as alice:
        for path, operations in paths.items():
            names = re.findall(r"{(\w+)}", path)
            if not names:
                continue
            url = path
            for name in names:
                url = url.replace("{" + name + "}", owners[name])
            for method in operations:
                response = bob.request(method.upper(), url)
                assert response.status_code == 404, (method, url, response.status_code, response.text)
                assert response.json()["error"]["message"].startswith("No such"), response.text
                walked.append((method, path))
                if method == "get":  # the owner still sees it
                    assert alice.get(url).status_code in (200, 206), url
    assert len(walked) >= 9, walked


def test_lists_show_only_your_own(service, owners):
    with service.client(owners["bob"]) as bob:
        assert owners["job_id"] not in [j["id"] for j in bob.get("/v1/fine_tuning/jobs").json()["data"]]
        assert owners["file_id"] not in [f["id"] for f in bob.get("/v1/files").json()["data"]]
        assert owners["model_id"] not in [m["id"] for m in bob.get("/v1/models").json()["data"]]
        assert bob.get("/v1/webhook_endpoints").json()["data"] == []
    with service.client(owners["admin"]) as admin:  # admins see every owner's jobs
        assert owners["job_id"] in [j["id"] for j in admin.get("/v1/fine_tuning/jobs?limit=100").json()["data"]]
        assert admin.get(f"/v1/fine_tuning/jobs/{owners['job_id']}").status_code == 200


def test_a_job_on_someone_elses_file_is_404(service, owners):
    with service.client(owners["bob"]) as bob:
        response = create_job(bob, owners["file_id"])
        assert response.status_code == 404 and response.json()["error"]["param"] == "training_file"
        response = create_job(bob, upload_ok(bob, chat_rows()[:1]), validation_file=owners["file_id"])
        assert response.status_code == 404 and response.json()["error"]["param"] == "validation_file"


def test_revoked_key_is_refused(service):
    from models.api_keys import list_keys, revoke_key
    from models.session import session_scope

    key = service.new_key("carol")
    with service.client(key) as carol:
        assert carol.get("/v1/files").status_code == 200
    with session_scope(service.database_url) as session:
        key_id = next(k.id for k in list_keys(session) if k.owner == "carol")
        assert revoke_key(session, key_id)
    time.sleep(1.5)  # verified keys are cached per API process (LORAQ_KEY_CACHE_SECONDS=1 in these tests)
    with service.client(key) as carol:
        response = carol.get("/v1/files")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
