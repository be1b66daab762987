"""The web UI: server-rendered pages (Jinja templates, one small CSS file, a few lines of JS)."""

from service.ui.views import ui_blueprint

__all__ = ["ui_blueprint"]
