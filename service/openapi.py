"""The OpenAPI document: a hand-written YAML file, adjusted to this server's settings.

``openapi.yaml`` is the contract (the tests run schemathesis against it). At serve
time three things are filled in from the settings and the loaded index: the
largest ``k``, whether read operations need a key (``x-access: read`` marks them;
``write`` ones always do), and the vector length the search accepts.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from core.config import Settings

SPEC_FILE = Path(__file__).with_name("openapi.yaml")
_KEYED = [{"bearerKey": []}, {"headerKey": []}]
_METHODS = ("get", "put", "post", "delete", "patch")


@functools.cache
def _base() -> dict[str, Any]:
    with open(SPEC_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def build_spec(settings: Settings, *, vector_dim: int | None = None) -> dict[str, Any]:
    """The document for this server (a fresh copy; callers may change it)."""
    spec = copy.deepcopy(_base())
    components = spec["components"]
    components["parameters"]["k"]["schema"]["maximum"] = settings.max_k
    components["schemas"]["SearchRequest"]["properties"]["k"]["maximum"] = settings.max_k
    multipart = spec["paths"]["/api/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    multipart["schema"]["properties"]["k"]["maximum"] = settings.max_k
    if vector_dim is not None:
        vector = components["schemas"]["SearchRequest"]["properties"]["vector"]
        vector["minItems"] = vector["maxItems"] = vector_dim
    for path_item in spec["paths"].values():
        for method in _METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            access = operation.pop("x-access", None)
            if access == "write" or (access == "read" and not settings.reads_public):
                operation["security"] = _KEYED
            elif access == "read":
                operation["security"] = [{}, *_KEYED]  # a key is accepted but not needed
            if access is None or (access == "read" and settings.reads_public):
                operation["responses"].pop("401", None)
    return spec

