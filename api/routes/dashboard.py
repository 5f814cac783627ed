"""/ui/: the web dashboard, static files shipped in the package (api/ui/) and run in the browser.

The page itself holds no data and needs no key: it asks for one and then calls /v1 with it, like any client.
Every /ui/ path that is not an asset answers with index.html, so a job page (/ui/jobs/{id}) can be bookmarked
and reloaded; the browser-side router picks the page from the address.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

UI_ROOT = Path(__file__).resolve().parent.parent / "ui"
INDEX = UI_ROOT / "index.html"

# Everything is served from this origin: no CDN, no inline script. Inline styles are allowed because the chart
# library sizes its elements with style attributes.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    # The page is tiny; revalidating it each time means a new release's assets are picked up at once.
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


class DashboardAssets(StaticFiles):
    """The scripts and styles, revalidated on each load (a 304 from their ETag when unchanged): their names carry
    no version, so a browser must not keep last release's copy."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/ui", methods=["GET", "HEAD"])
async def to_dashboard() -> RedirectResponse:
    """The bare address and /ui lead to the dashboard."""
    return RedirectResponse("/ui/", status_code=307)


@router.api_route("/ui/{page:path}", methods=["GET", "HEAD"])
async def dashboard_page(page: str) -> FileResponse:
    """The dashboard's single page, for every address under /ui/ (assets are mounted before this route)."""
    return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def install_dashboard(app: FastAPI) -> None:
    # Assets first: a mount added after the catch-all page route would never be reached.
    app.mount("/ui/assets", DashboardAssets(directory=UI_ROOT / "assets"), name="ui-assets")
    app.include_router(router)
