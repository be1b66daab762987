"""Field rules shared by every source format, and image-reference resolution.

A source format only splits its input into fields; this module decides whether
the fields make an item:

* ``external_id`` is required (a string, or an integer in JSON), surrounding
  whitespace is stripped, control characters are refused;
* no text anywhere (attributes and image references included) may hold NUL, which
  PostgreSQL cannot store, or undecodable bytes;
* ``title`` defaults to ``""``; empty ``category`` and ``group`` mean none;
* ``attributes`` is a JSON object; any other field the format does not know goes
  into the attributes too (CSV cells as strings, empty cells left out; JSONL values
  as they are). A key given both ways is an error rather than a silent choice;
* ``images`` lists 1 to :data:`MAX_IMAGES_PER_ITEM` references: a path relative to
  the source file's directory (refused in an uploaded catalog, which has none:
  :data:`NO_UPLOAD_FOLDER`), an absolute path, or a ``file://`` URI. ``http(s)``
  URLs are refused: an import never touches the network. Whether the file may be read
  (inside the import roots, a regular file) is decided when it is read
  (:func:`core.media.read_import_file`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from core.catalog.rows import (
    MAX_CATEGORY,
    MAX_EXTERNAL_ID,
    MAX_GROUP,
    MAX_IMAGES_PER_ITEM,
    MAX_SOURCE_URI,
    MAX_TITLE,
    CatalogRow,
    ImageRef,
    RowError,
)
from core.text import encodes_as_utf8

KNOWN_FIELDS = ("external_id", "title", "category", "group", "attributes", "images")

_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
"""A NUL as ``json.dumps`` writes it: ``\\u0000`` whose backslash is not itself escaped
(preceded by an even number of backslashes; ``\\\\u0000`` is the text ``\\u0000``)."""


NO_UPLOAD_FOLDER = ("is a relative path, and an uploaded catalog has no folder on the server "
                    "(the worker that imports it may run on another host): use an absolute path or file:// URI "
                    "inside the workers' LOOKALIKE_IMPORT_ROOTS")
"""Why a relative image reference cannot work in a catalog uploaded through the API."""


class RowInvalid(ValueError):
    """A field breaks a rule; the message is the row error's reason."""


def make_row(
    line: int,
    fields: Mapping[str, Any],
    *,
    base_dir: Path | None,
    extras: Mapping[str, Any] | None = None,
    image_refs: list[ImageRef] | None = None,
) -> CatalogRow | RowError:
    """Validate one record's fields; ``extras`` are the unknown fields headed for attributes.

    ``base_dir``: the folder relative image references are below; None for an uploaded
    catalog, where they are refused (:data:`NO_UPLOAD_FOLDER`).

    ``image_refs`` replaces the ``images`` field for sources that already know their
    images (a folder's file, the sample's bytes).
    """
    raw_id = fields.get("external_id")
    external_id = _external_id_or_none(raw_id)
    try:
        if external_id is None:
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                raise RowInvalid("missing external_id")
            raise RowInvalid(f"external_id must be a string or an integer, got {_json_type(raw_id)}")
        _check_text("external_id", external_id, MAX_EXTERNAL_ID)
        row = CatalogRow(
            line=line,
            external_id=external_id,
            title=_optional_text("title", fields.get("title"), MAX_TITLE) or "",
            category=_optional_text("category", fields.get("category"), MAX_CATEGORY),
            group=_optional_text("group", fields.get("group"), MAX_GROUP),
            attributes=_attributes(fields.get("attributes"), extras or {}),
            images=(_given_images(image_refs) if image_refs is not None
                    else resolve_images(fields.get("images"), base_dir)),
        )
    except RowInvalid as exc:
        return RowError(line, external_id, str(exc))
    return row


def _external_id_or_none(value: Any) -> str | None:
    if isinstance(value, bool):  # JSON true is not an id, even though bool is an int
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _check_text(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise RowInvalid(f"{name} is {len(value)} characters long, the limit is {limit}")
    if not encodes_as_utf8(value):
        raise RowInvalid(f"{name} is not valid UTF-8")
    if "\x00" in value:  # a title may hold other controls (newlines), never this one
        raise RowInvalid(f"{name} contains a NUL character")
    if any(unicodedata.category(ch) == "Cc" for ch in value) and name != "title":
        raise RowInvalid(f"{name} contains control characters")


def _optional_text(name: str, value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowInvalid(f"{name} must be a string, got {_json_type(value)}")
    value = value.strip()
    if not value:
        return None
    _check_text(name, value, limit)
    return value


def _attributes(value: Any, extras: Mapping[str, Any]) -> dict[str, Any]:
    if value is None or value == "":
        attributes: dict[str, Any] = {}
    elif isinstance(value, dict):
        attributes = dict(value)
    else:
        raise RowInvalid(f"attributes must be a JSON object, got {_json_type(value)}")
    for key, extra in extras.items():
        if key in attributes:
            raise RowInvalid(f"attribute {key!r} is given both as its own field and inside attributes")
        attributes[key] = extra
    try:
        encoded = json.dumps(attributes, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN/Infinity: not JSON, and PostgreSQL's JSONB refuses them
        raise RowInvalid(f"attributes must be plain JSON: {exc}") from None
    except RecursionError:
        raise RowInvalid("attributes are nested too deeply") from None
    if not encodes_as_utf8(encoded):
        raise RowInvalid("attributes are not valid UTF-8")
    if _JSON_NUL.search(encoded):  # JSONB refuses \u0000; SQLite would store it: refused on both
        raise RowInvalid("attributes contain a NUL character")
    return attributes


def resolve_images(value: Any, base_dir: Path | None) -> list[ImageRef]:
    """Turn the ``images`` field (a list of references) into image references."""
    if value is None:
        refs: Sequence[Any] = []
    elif isinstance(value, list):
        refs = value
    else:
        raise RowInvalid(f"images must be a list of paths, got {_json_type(value)}")
    if not refs:
        raise RowInvalid("no images: every item needs at least one image")
    if len(refs) > MAX_IMAGES_PER_ITEM:
        raise RowInvalid(f"{len(refs)} images, the limit is {MAX_IMAGES_PER_ITEM} per item")
    return [resolve_image_ref(ref, base_dir) for ref in refs]


def _given_images(refs: list[ImageRef]) -> list[ImageRef]:
    """Images a source already knows (a folder's file, uploaded bytes): their references are
    stored as ``source_uri``, so they follow the rules of written ones (a file name with
    undecodable bytes would otherwise reach the database, which refuses it)."""
    for ref in refs:
        _check_reference(ref.uri)
    return refs


def _check_reference(ref: str) -> None:
    if len(ref) > MAX_SOURCE_URI:
        raise RowInvalid(f"image reference is {len(ref)} characters long, the limit is {MAX_SOURCE_URI}")
    if not encodes_as_utf8(ref):
        raise RowInvalid("image reference is not valid UTF-8")
    if "\x00" in ref:  # no file name holds one, and open() raises ValueError on it
        raise RowInvalid("image reference contains a NUL character")


def resolve_image_ref(ref: Any, base_dir: Path | None) -> ImageRef:
    """One reference: relative path (below ``base_dir``), absolute path or ``file://`` URI; never a network URL."""
    if not isinstance(ref, str) or not ref.strip():
        raise RowInvalid(f"image reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    _check_reference(ref)
    try:
        parts = urlsplit(ref)
    except ValueError as exc:  # "http://[" : an unbalanced IPv6 bracket
        raise RowInvalid(f"image {ref!r} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in {"http", "https"}:
        raise RowInvalid(
            f"image {ref!r} is a web URL: imports never download anything; "
            "fetch the file first and reference it by path"
        )
    if scheme == "file":
        if parts.netloc not in {"", "localhost"}:
            raise RowInvalid(f"image {ref!r}: file:// URIs must point at this machine")
        path = Path(unquote(parts.path))
        if "\x00" in str(path):  # %00
            raise RowInvalid(f"image {ref!r}: the path contains a NUL character")
    elif len(scheme) > 1:  # one letter would be a Windows drive, which is just a path
        raise RowInvalid(f"image {ref!r}: unsupported URI scheme {scheme!r} (use a path or file://)")
    else:
        path = Path(ref)
    if not path.is_absolute():
        if base_dir is None:
            raise RowInvalid(f"image {ref!r} {NO_UPLOAD_FOLDER}")
        path = base_dir / path
    return ImageRef(uri=ref, path=path)


def split_known_fields(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known fields, everything else) of one record."""
    known = {k: v for k, v in record.items() if k in KNOWN_FIELDS}
    extras = {k: v for k, v in record.items() if k not in KNOWN_FIELDS}
    return known, extras


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
