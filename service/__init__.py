"""The Flask API and web UI: ``create_app(settings)`` in :mod:`service.app`."""
