"""The web dashboard: static HTML, CSS and JavaScript modules (no build step) served at `/` by `mount`.

The pages call the same API with the same organisation token (sent as ``Authorization: Bearer``, kept in
sessionStorage). Every static answer carries a Content-Security-Policy that allows only this origin's
scripts, styles and requests, so no inline script runs even if a page ever inserted markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

HERE = Path(__file__).resolve().parent
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                               " connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self';"
                               " frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class Pages(StaticFiles):
    """StaticFiles with the dashboard's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at `/` (after the API's routes, which keep precedence)."""
    pages: Any = Pages(directory=HERE, html=True)
    app.mount("/", pages, name="web")
