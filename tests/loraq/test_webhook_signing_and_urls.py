"""Webhook signatures (checked with the `openai` SDK's Standard Webhooks verifier and by the spec's algorithm
written out) and the rules on which URLs loraq may call."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import openai
import pytest

from loraq.webhook_signing import new_secret, sign, signed_headers
from loraq.webhook_urls import WebhookURLError, checked_address

BODY = json.dumps({"object": "event", "id": "evt_1", "type": "fine_tuning.job.succeeded", "created_at": 1,
                   "data": {"id": "ftjob-1"}}, separators=(",", ":"))  # fmt: skip


def test_signatures_verify_with_the_openai_sdk_and_by_the_spec():
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    headers = signed_headers([secret], "msg_abc", BODY)
    event = openai.OpenAI(api_key="unused").webhooks.unwrap(BODY, headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == "ftjob-1"

    # The spec: base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}", keyed with the decoded secret.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"msg_abc.{headers['webhook-timestamp']}.{BODY}".encode(), hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()

    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="unused").webhooks.unwrap(BODY.replace("ftjob-1", "ftjob-2"), headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="unused").webhooks.unwrap(BODY, headers, secret=new_secret())


def test_several_secrets_give_one_signature_each_and_either_verifies():
    old, new, other = new_secret(), new_secret(), new_secret()
    headers = signed_headers([new, old], "msg_abc", BODY)
    signatures = headers["webhook-signature"].split(" ")
    assert signatures == [sign(new, "msg_abc", int(headers["webhook-timestamp"]), BODY),
                          sign(old, "msg_abc", int(headers["webhook-timestamp"]), BODY)]  # fmt: skip
    webhooks = openai.OpenAI(api_key="unused").webhooks
    for secret in (old, new):
        assert webhooks.unwrap(BODY, headers, secret=secret).data.id == "ftjob-1"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        webhooks.unwrap(BODY, headers, secret=other)
    with pytest.raises(ValueError, match="at least one"):
        signed_headers([], "msg_abc", BODY)


def test_the_signature_covers_id_and_timestamp():
    secret = new_secret()
    assert sign(secret, "msg_a", 100, BODY) != sign(secret, "msg_b", 100, BODY) != sign(secret, "msg_a", 101, BODY)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",  # private, and not https
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",  # the cloud metadata address (link-local)
        "https://127.0.0.1:8443/hook",
        "https://localhost/hook",  # resolves to loopback
        "https://[::1]/hook",
        "https://[::ffff:192.168.1.1]/hook",  # an IPv4-mapped private address
        "https://100.64.0.1/hook",  # shared address space (carrier-grade NAT)
        "https://224.0.0.1/hook",  # multicast
        "https://0.0.0.0/hook",
        "http://8.8.8.8/hook",  # public, but not https
        "https://user:pw@8.8.8.8/hook",
        "ftp://8.8.8.8/hook",
        "/relative/hook",
        "https://no-such-host.invalid/hook",
    ],
)
def test_internal_plain_and_unresolvable_urls_are_refused(url):
    with pytest.raises(WebhookURLError):
        checked_address(url, frozenset())


def test_public_https_and_operator_allowed_hosts_pass():
    assert checked_address("https://8.8.8.8/hook", frozenset()) == "8.8.8.8"
    assert checked_address("https://[2606:4700:4700::1111]:8443/x", frozenset()) == "2606:4700:4700::1111"
    allowed = frozenset({"127.0.0.1", "localhost"})
    assert checked_address("http://127.0.0.1:9000/hook", allowed) == "127.0.0.1"
    assert checked_address("http://LOCALHOST:9000/hook", allowed) in ("127.0.0.1", "::1")
    with pytest.raises(WebhookURLError):  # allowing one host does not allow another
        checked_address("http://10.0.0.1/hook", allowed)
