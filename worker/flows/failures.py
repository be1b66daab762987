"""Failures a flow expects and explains (no model yet, recall too low, ...).

A flow records these on its job, message only, and returns: they are answers for
the user, not bugs, so they carry no traceback. Anything else is recorded too and
then raised, so that Celery (or the in-process runner) logs it as an error.
"""

from __future__ import annotations


class FlowError(RuntimeError):
    """An expected failure; ``str(exc)`` says what is wrong and what to do."""
