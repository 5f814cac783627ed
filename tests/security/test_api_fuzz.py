"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis), against the running
service: no request, however odd, gets a 5xx, and every response matches the schema."""

from __future__ import annotations

import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from loraq.settings import Settings

pytestmark = pytest.mark.e2e

schema = schemathesis.openapi.from_dict(create_app(Settings(data_dir=tempfile.gettempdir())).openapi())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_and_responses_match_the_schema(case, service):
    response = case.call(base_url=service.base_url, headers={"Authorization": f"Bearer {service.api_key}"}, timeout=30)
    case.validate_response(response, checks=CHECKS)
