"""/ui/: the dashboard's page for every address under it, its assets, nothing from another origin, and every
file listed in the package data (the browser tests are in tests/ui)."""

from __future__ import annotations

import re
import tomllib
from glob import glob
from pathlib import Path

import pytest

from api.routes.dashboard import UI_ROOT

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(p for p in UI_ROOT.rglob("*") if p.is_file())
SOURCES = [p for p in ASSETS if p.suffix in (".js", ".css", ".html") and "vendor" not in p.parts]


@pytest.mark.parametrize("path", ["/ui/", "/ui/jobs/ftjob-abc123", "/ui/files", "/ui/no/such/page"])
def test_every_address_under_ui_is_the_page(app_client, path):
    """Deep links load the app (no key needed for the page itself), which then picks the page from the address."""
    response = app_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/ui/assets/app.js">' in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_bare_addresses_lead_to_the_dashboard(app_client, path):
    response = app_client.get(path, follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"


def test_assets_are_served_with_their_types_and_a_missing_one_is_a_404(app_client):
    script = app_client.get("/ui/assets/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache" and script.headers["etag"]
    assert app_client.get("/ui/assets/app.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    assert "text/css" in app_client.get("/ui/assets/vendor/uplot/uPlot.min.css").headers["content-type"]
    missing = app_client.get("/ui/assets/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert app_client.get("/ui/assets/..%2F..%2Fapp.py").status_code == 404


def test_the_dashboard_is_not_in_the_api_schema(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(UI_ROOT)))
def test_nothing_loads_from_another_origin(source):
    """Works offline: no CDN script, style, font or module."""
    text = source.read_text()
    remote = re.compile(
        r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|from\s+["'](?:https?:)?//|import\(\s*["'](?:https?:)?//|url\(\s*["']?(?:https?:)?//"""
    )
    assert not remote.findall(text)


@pytest.mark.parametrize("source", [p for p in SOURCES if p.suffix == ".js"], ids=lambda p: p.name)
def test_every_module_import_names_a_shipped_file(source):
    for target in re.findall(r"""from\s+["'](\.[^"']+)["']""", source.read_text()):
        assert (source.parent / target).resolve().is_file(), f"{source.name} imports {target}"


def test_every_dashboard_file_is_in_the_package_data():
    """setuptools' own matching (globs under the package folder) of pyproject.toml's patterns for `api`."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    packaged = {Path(f).resolve() for p in patterns for f in glob(str(UI_ROOT.parent / p), recursive=True)}
    assert [p for p in ASSETS if p not in packaged] == []
    assert (UI_ROOT / "assets" / "vendor" / "uplot" / "LICENSE").is_file()
