"""Server filesystem paths in answers: hidden from anonymous readers, artifact keys for keyed ones.

Jobs, models, indexes and readiness carry paths the server wrote or read: checkpoints,
run directories, uploaded import files, the image paths of an import's rejected rows,
the database socket in a connection error. A reader without a key must not learn how
the server's disk is laid out, so every answer built from them goes through
:func:`redactor` (the JSON API and the web UI's job page alike):

* **anonymous** (no valid API key): every absolute path in any string, and the whole
  value of a field named ``path``, ``*_path`` or ``*_dir``, becomes ``"<path>"``;
* **keyed** (a valid key): a path under ``LOOKALIKE_ARTIFACTS_DIR`` becomes its artifact
  key, relative to that directory (``models/m-1/checkpoint.pt``, ``imports/ab12.csv``),
  which is what an operator needs to find it; other paths (an import file named on
  ``lookalike catalog import``, a dataset directory) are the operator's own and shown as
  they are.

docs/OPERATIONS.md ("Server paths in answers") describes the same rules for users.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.auth import request_has_valid_key
from service.context import service_context

HIDDEN = "<path>"
"""What an anonymous reader sees in place of a server path."""

_PATH_CHARS = r"[^\s'\"<>()\[\]{},;:|`]"
_ABSOLUTE = re.compile(rf"(?<![\w.~:/\\-])/(?!api/|static/){_PATH_CHARS}+")
"""An absolute POSIX path inside text. Not ``a/b`` or ``1/k`` (a word character before the
slash), not the inside of a URL (``://host/x``), not the service's own URLs
(``/api/v1/media/...``, ``/static/...``), which are no filesystem paths."""


class PathView(enum.Enum):
    """How much of a server path an answer may show."""

    HIDDEN = "hidden"
    """Anonymous readers: no path at all."""
    ARTIFACT_KEYS = "artifact_keys"
    """Keyed callers: artifact paths relative to the artifacts directory, others as they are."""


@functools.lru_cache(maxsize=8)
def _under(root: str) -> re.Pattern[str]:
    """``root`` or a path under it (group 1: the part below), not a longer name (``root2/x``)."""
    return re.compile(rf"{re.escape(root.rstrip('/'))}(?:/({_PATH_CHARS}*))?(?!{_PATH_CHARS})")


def _is_path_field(name: str) -> bool:
    return name == "path" or name.endswith(("_path", "_dir"))


@dataclass(frozen=True)
class PathRedactor:
    """Rewrites the server paths in JSON-shaped values for one :class:`PathView`."""

    artifacts_dir: Path
    """The resolved ``LOOKALIKE_ARTIFACTS_DIR``."""
    view: PathView

    def text(self, value: str) -> str:
        """``value`` with every server path in it rewritten (see the module docstring)."""
        # The artifacts directory first: its name may hold characters (spaces) that end
        # the generic pattern's match early and would leave a tail of it behind.
        if self.view is PathView.HIDDEN:
            value = _under(str(self.artifacts_dir)).sub(HIDDEN, value)
            return _ABSOLUTE.sub(HIDDEN, value)
        return _under(str(self.artifacts_dir)).sub(lambda m: m.group(1) or ".", value)

    def json(self, value: Any, *, field: str = "") -> Any:
        """A copy of ``value`` (dicts, lists, strings, scalars) with the paths rewritten."""
        if isinstance(value, dict):
            return {k: self.json(v, field=str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v, field=field) for v in value]
        if isinstance(value, str):
            if self.view is PathView.HIDDEN and value and _is_path_field(field):
                return HIDDEN
            return self.text(value)
        return value


def redactor() -> PathRedactor:
    """The redactor for the current request: keyed callers see artifact keys, others no paths."""
    view = PathView.ARTIFACT_KEYS if request_has_valid_key() else PathView.HIDDEN
    return PathRedactor(service_context().settings.resolved_artifacts_dir, view)
