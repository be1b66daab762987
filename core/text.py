"""Text that every database, JSON encoder and terminal accepts, whatever bytes it came from.

Catalog sources are read with ``surrogateescape`` (an undecodable byte becomes a lone
surrogate) and JSON's ``\\udXXX`` escapes can produce lone surrogates too; a binary file
can hold NUL. PostgreSQL refuses both in text and JSONB, so a message or a job argument
holding one would make the write that records it fail (docs/DECISIONS.md, "Media store
and catalog import", "Any bytes"). This module is the one place that says what such text
is and how it is made safe.
"""

from __future__ import annotations

import re

MAX_MESSAGE = 2000
"""Characters of an error message kept: a message may quote a whole (binary) header."""

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
"""Lone surrogates, which no UTF-8 encoder writes, and the C0 controls but tab and newline
(PostgreSQL text refuses NUL; terminals act on the others)."""


def encodes_as_utf8(value: str) -> bool:
    """False for text holding lone surrogates (undecodable bytes read with ``surrogateescape``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(value: object, *, limit: int = MAX_MESSAGE) -> str:
    r"""``value`` as text that every database, JSON encoder and terminal accepts.

    Messages that quote the input are stored on the job, so unsafe characters become
    visible escapes: an undecodable byte ``\xNN`` (the byte itself), any other lone
    surrogate ``\udNNN``, a control character ``\xNN``. The result is cut to ``limit``
    characters.
    """
    text = value if isinstance(value, str) else str(value)
    text = _UNSAFE.sub(_escape, text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def is_safe_text(value: str) -> bool:
    """True when :func:`safe_text` keeps ``value`` as it is (length aside)."""
    return safe_text(value, limit=len(value) + 1) == value
