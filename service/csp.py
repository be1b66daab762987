"""The Content-Security-Policy of the HTML pages (``service.app.security_headers`` sets it).

The pages load only the server's own scripts, styles and images, and have no inline
scripts, styles or event handlers. The API docs page adds ``data:`` images: Swagger UI's
stylesheet draws its icons as ``data:`` SVGs, which run no code.
"""

from __future__ import annotations


def content_security_policy(*, data_images: bool = False) -> str:
    """The policy; ``data_images`` also allows ``data:`` URLs as images (the API docs page)."""
    return "; ".join((
        "default-src 'self'",       # the UI's own scripts and style.css; JSON polling and feedback (connect-src)
        # /api/v1/media images; blob: is the search page's photo preview
        "img-src 'self' blob:" + (" data:" if data_images else ""),
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


UI_CONTENT_SECURITY_POLICY = content_security_policy()
"""For every HTML page but the API docs."""
API_DOCS_CONTENT_SECURITY_POLICY = content_security_policy(data_images=True)
"""For ``/api/v1/docs`` (Swagger UI)."""
