"""Webhook endpoint routes, in process on a real SQLite database: registration (the secret shown once), the
URL rules (400 naming `url`), event types, listing, deletion, and owner isolation (another owner gets 404).
The SDK's update, rotate_secret and test are in test_webhook_sdk.py."""

from __future__ import annotations

import pytest

from tests.api.conftest import auth

PUBLIC_URL = "https://8.8.8.8/hooks/loraq"  # a public address literal: no DNS needed


@pytest.mark.parametrize("prefix", ["/v1/webhook_endpoints", "/v1/webhooks"])
def test_register_list_retrieve_delete(app_client, prefix):
    response = app_client.post(prefix, json={"url": PUBLIC_URL, "name": "ci"}, headers=auth("alice"))
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["object"] == "webhook_endpoint" and created["url"] == PUBLIC_URL and created["name"] == "ci"
    assert created["signing_secret"].startswith("whsec_")
    assert created["signing_secret_hint"] == "whsec_..." + created["signing_secret"][-4:]
    assert created["event_types"] == [
        "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled", "fine_tuning.job.paused",
    ]  # fmt: skip

    shown = app_client.get(f"{prefix}/{created['id']}", headers=auth("alice")).json()
    assert "signing_secret" not in shown and shown["id"] == created["id"]
    listed = app_client.get(prefix, headers=auth("alice")).json()
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [created["id"]]
    log = app_client.get(f"{prefix}/{created['id']}/deliveries", headers=auth("alice")).json()
    assert log == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}

    deleted = app_client.delete(f"{prefix}/{created['id']}", headers=auth("alice")).json()
    assert deleted == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert app_client.get(f"{prefix}/{created['id']}", headers=auth("alice")).status_code == 404


def test_events_and_description_are_accepted_as_the_briefer_names(app_client):
    body = {"url": PUBLIC_URL, "events": ["fine_tuning.job.failed"], "description": "pager"}
    created = app_client.post("/v1/webhooks", json=body, headers=auth("alice")).json()
    assert created["event_types"] == ["fine_tuning.job.failed"] and created["name"] == "pager"


BAD_URLS = ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "https://127.0.0.1/hook", "http://8.8.8.8/",
            "not a url", "https://localhost/hook"]  # fmt: skip
BAD_BODIES = [
    ({"url": PUBLIC_URL, "event_types": ["batch.completed"]}, "event_types"),
    ({"url": PUBLIC_URL, "event_types": []}, "event_types"),
    ({"url": PUBLIC_URL, "secret": "mine"}, "secret"),
    ({}, "url"),
]


def test_internal_urls_unknown_events_and_fields_are_a_400_naming_them(app_client):
    for url in BAD_URLS:
        response = app_client.post("/v1/webhooks", json={"url": url}, headers=auth("alice"))
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["param"] == "url" and error["code"] == "invalid_webhook_url", url
    for body, param in BAD_BODIES:
        response = app_client.post("/v1/webhooks", json=body, headers=auth("alice"))
        assert response.status_code == 400 and response.json()["error"]["param"] == param, (body, response.text)
    assert app_client.get("/v1/webhooks", headers=auth("alice")).json()["data"] == []


def test_another_owners_endpoint_is_a_404(app_client):
    created = app_client.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=auth("alice")).json()
    calls = [("GET", "", None), ("GET", "/deliveries", None), ("DELETE", "", None), ("POST", "", {"name": "x"}),
             ("POST", "/rotate_secret", {}), ("POST", "/test", {"event_type": "fine_tuning.job.failed"})]  # fmt: skip
    for method, path, body in calls:
        response = app_client.request(method, f"/v1/webhooks/{created['id']}{path}", json=body, headers=auth("bob"))
        assert response.status_code == 404 and response.json()["error"]["code"] == "webhook_endpoint_not_found"
    assert app_client.get("/v1/webhooks", headers=auth("bob")).json()["data"] == []
    assert app_client.get(f"/v1/webhooks/{created['id']}", headers=auth("alice")).status_code == 200


def test_an_owner_may_register_a_limited_number(app_client, settings):
    settings.max_webhooks_per_owner = 2
    for _ in range(2):
        assert app_client.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=auth("alice")).status_code == 200
    response = app_client.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=auth("alice"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_webhook_endpoints"
    assert app_client.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=auth("bob")).status_code == 200


def test_the_event_types_loraq_sends(app_client):
    listed = app_client.get("/v1/webhook_event_types", headers=auth("alice")).json()
    assert listed == {"object": "list", "data": ["fine_tuning.job.succeeded", "fine_tuning.job.failed",
                                                  "fine_tuning.job.cancelled", "fine_tuning.job.paused"]}  # fmt: skip
    assert app_client.get("/v1/webhook_event_types").status_code == 401


def test_update_and_rotate_secret_take_no_body_and_bad_fields_are_named(app_client):
    created = app_client.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=auth("alice")).json()
    path = f"/v1/webhook_endpoints/{created['id']}/rotate_secret"
    rotated = app_client.post(path, headers=auth("alice")).json()
    assert rotated["signing_secret"] not in ("", created["signing_secret"]) and rotated["id"] == created["id"]
    for body, param in [({"keep_old_secret_active_for_24_hours": "later"}, "keep_old_secret_active_for_24_hours"),
                        ({"keep_old": True}, "keep_old")]:  # fmt: skip
        response = app_client.post(path, json=body, headers=auth("alice"))
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    unchanged = app_client.post(f"/v1/webhook_endpoints/{created['id']}", headers=auth("alice"))  # no body
    assert unchanged.status_code == 200 and unchanged.json()["url"] == PUBLIC_URL
    test = app_client.post(f"/v1/webhook_endpoints/{created['id']}/test", json={}, headers=auth("alice"))
    assert test.status_code == 400 and test.json()["error"]["param"] == "event_type"
