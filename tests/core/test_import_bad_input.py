"""Bad input and faults (issue 12): an import keeps every good row, reports every bad
row by its line, and ends succeeded or failed, whatever the bytes.

The chunk-boundary cases call :func:`core.catalog.import_catalog` (what the worker
calls) with a small ``chunk_size``, so a bad row can sit first or last in a chunk, a
chunk can hold only bad rows. The job-level cases send IMPORT_CATALOG through the
in-process dispatcher, which runs the worker's own handler, and read the job row
back. Both run on SQLite and on a throwaway PostgreSQL, which refuses more than SQLite
(NUL in text, lone surrogates in JSONB).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CatalogFormatError, RowError, import_catalog
from core.config import Settings
from core.db import Item, JobKind, JobStatus
from core.jobs import create_job, get_job
from core.media import MediaStore
from core.text import MAX_MESSAGE, is_safe_text, safe_text
from tests.fixtures.catalog import run_job, write_image
from worker.flows.importing import run_import
from worker.local import InProcessDispatcher

HEADER = "external_id,title,attributes,images\n"

_prefixes = (f"t{n}-" for n in itertools.count())
"""A fresh external-id prefix per import: hypothesis examples share one database."""


@pytest.fixture
def store(any_db_settings: Settings) -> MediaStore:
    return MediaStore.from_settings(any_db_settings, fsync=False)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A directory with one good image (``a.png``) and one corrupt one (``bad.png``)."""
    root = tmp_path / "shop"
    write_image(root / "a.png", 1)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def stored_titles(sessions: sessionmaker[Session], prefix: str) -> dict[str, str]:
    with sessions() as session:
        rows = session.execute(select(Item.external_id, Item.title).where(Item.external_id.startswith(prefix)))
        return {r.external_id: r.title for r in rows}


# ----------------------------------------------------------------------------- a CSV, row kind by row kind
@dataclass
class Built:
    """A source file's bytes, the rows it should store and the lines it should reject."""

    data: bytes
    valid: dict[str, str]
    """external_id -> the title as stored."""
    bad_lines: list[int]


BAD_KINDS = ("no_id", "missing_image", "corrupt_image", "few_fields", "bad_utf8", "web_url", "control_id",
             "nul_title", "long_id", "bad_attributes", "deep_attributes", "bad_quote", "ipv6_uri",
             "nul_uri", "duplicate")


def _bad_csv_line(kind: str, ident: str, earlier_valid: list[str]) -> bytes:
    """One physical line that is a bad record of ``kind`` (never blank, never a multi-line quote)."""
    lines = {
        "no_id": ",t,,a.png",
        "missing_image": f"{ident},t,,nope.png",
        "corrupt_image": f"{ident},t,,bad.png",
        "few_fields": f"{ident},t",
        "web_url": f"{ident},t,,https://example.com/x.jpg",
        "control_id": f"{ident}\x01,t,,a.png",
        "nul_title": f"{ident},a\x00b,,a.png",
        "long_id": f"{'x' * 300},t,,a.png",
        "bad_attributes": f"{ident},t,{{nope,a.png",
        "deep_attributes": f"{ident},t,{'[' * 5000},a.png",
        "bad_quote": f'"{ident}"x,t,,a.png',
        "ipv6_uri": f"{ident},t,,http://[",
        "nul_uri": f"{ident},t,,a\x00.png",
        "duplicate": f"{earlier_valid[0] if earlier_valid else ''},again,,a.png",
    }
    if kind == "bad_utf8":
        return f"{ident},Caf".encode() + b"\xe9\xff,,a.png"
    return lines[kind].encode()


def build_csv(prefix: str, rows: list[tuple[str, str]]) -> Built:
    """``rows`` are ("valid", title) or ("bad", kind) or ("bytes", hex of a random line)."""
    out = io.BytesIO()
    out.write(HEADER.encode())
    valid: dict[str, str] = {}
    bad_lines: list[int] = []
    line = 2
    for n, (what, payload) in enumerate(rows):
        ident = f"{prefix}{n}"
        if what == "valid":
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerow([ident, payload, "", "a.png"])
            record = text.getvalue().encode()
            valid[ident] = payload.strip()
        else:
            record = (bytes.fromhex(payload) if what == "bytes" else _bad_csv_line(payload, ident, list(valid))) + b"\n"
            bad_lines.append(line)
        out.write(record)
        line += record.count(b"\n")
    return Built(out.getvalue(), valid, bad_lines)


def check_import(sessions: sessionmaker[Session], store: MediaStore, path: Path, built: Built,
                 prefix: str, chunk_size: int) -> None:
    report = import_catalog(path, sessions=sessions, store=store, chunk_size=chunk_size)
    assert [e.line for e in report.errors] == built.bad_lines, [str(e) for e in report.errors]
    assert all(is_safe_text(e.reason) and (e.external_id is None or is_safe_text(e.external_id))
               for e in report.errors)
    assert (report.created, report.updated, report.unchanged) == (len(built.valid), 0, 0)
    assert stored_titles(sessions, prefix) == built.valid


@pytest.mark.parametrize("chunk_size", [1, 3, 500])
@pytest.mark.parametrize(
    "layout",
    [
        pytest.param("VVVB", id="bad-row-after-the-last-full-chunk"),  # the reported crash
        pytest.param("BVVV", id="bad-first-row"),
        pytest.param("VVBV", id="bad-last-row-of-a-chunk"),
        pytest.param("VVVBVVV", id="bad-first-row-of-a-chunk"),
        pytest.param("VVVBBB", id="a-chunk-of-only-bad-rows"),
        pytest.param("VVVBBBVVV", id="only-bad-rows-between-chunks"),
        pytest.param("BBBBBBB", id="all-rows-bad"),
        pytest.param("VVV", id="exact-chunk"),
        pytest.param("", id="only-a-header"),
    ],
)
def test_chunk_boundaries(sessions: sessionmaker[Session], store: MediaStore, shop: Path,
                          layout: str, chunk_size: int) -> None:
    prefix = next(_prefixes)
    kinds = itertools.cycle(BAD_KINDS)
    rows = [("valid", f"title {n}") if c == "V" else ("bad", next(kinds)) for n, c in enumerate(layout)]
    built = build_csv(prefix, rows)
    path = shop / "catalog.csv"
    path.write_bytes(built.data)
    check_import(sessions, store, path, built, prefix, chunk_size)


def test_every_bad_kind_is_one_reported_line(sessions: sessionmaker[Session], store: MediaStore,
                                             shop: Path) -> None:
    prefix = next(_prefixes)
    rows = [("valid", "first")] + [("bad", kind) for kind in BAD_KINDS] + [("valid", "last")]
    built = build_csv(prefix, rows)
    path = shop / "catalog.csv"
    path.write_bytes(built.data)
    report = import_catalog(path, sessions=sessions, store=store, chunk_size=2)
    reasons = {e.line: e.reason for e in report.errors}
    assert sorted(reasons) == built.bad_lines
    by_kind = dict(zip(BAD_KINDS, (reasons[line] for line in built.bad_lines)))
    assert "NUL" in by_kind["nul_title"] and "NUL" in by_kind["nul_uri"]
    assert "nested too deeply" in by_kind["deep_attributes"]
    assert "not a valid URI" in by_kind["ipv6_uri"]
    assert "duplicate external_id: line 2" in by_kind["duplicate"]
    assert stored_titles(sessions, prefix) == built.valid


def _valid_lines(prefix: str, numbers: range) -> str:
    return "".join(f"{prefix}{n},title {n},,a.png\n" for n in numbers)


@pytest.mark.parametrize("after", [3, 4000], ids=["to-the-end-of-the-file", "past-the-field-size-limit"])
def test_an_unclosed_quote_is_one_bad_line_and_the_rows_around_it_are_kept(
        sessions: sessionmaker[Session], store: MediaStore, shop: Path, after: int) -> None:
    """A stray quote used to swallow every following line into one field; it is reported on its
    line, and the lines after it are read as rows again (docs/DECISIONS.md)."""
    prefix = next(_prefixes)
    path = shop / "catalog.csv"
    path.write_text(HEADER + _valid_lines(prefix, range(2)) + f'{prefix}q,"Unclosed title,,a.png\n'
                    + _valid_lines(prefix, range(2, 2 + after)), encoding="utf-8")
    report = import_catalog(path, sessions=sessions, store=store, chunk_size=500)
    assert [e.line for e in report.errors] == [4]
    assert report.errors[0].reason.startswith("malformed CSV: a quoted field starts on this line and is not closed")
    assert "the lines after this one are read as rows of their own" in report.errors[0].reason
    assert report.created == 2 + after
    assert set(stored_titles(sessions, prefix)) == {f"{prefix}{n}" for n in range(2 + after)}


def test_a_quote_closed_lines_later_names_the_lines_it_joined(sessions: sessionmaker[Session], store: MediaStore,
                                                               shop: Path) -> None:
    prefix = next(_prefixes)
    path = shop / "catalog.csv"
    # Line 3 opens a quote that line 5 closes in a way the parser accepts: one record of the wrong shape.
    path.write_text(HEADER + _valid_lines(prefix, range(1)) + f'{prefix}q,"Stray\n{prefix}x,y\nz",,a.png,extra\n'
                    + _valid_lines(prefix, range(1, 3)), encoding="utf-8")
    report = import_catalog(path, sessions=sessions, store=store)
    assert [str(e) for e in report.errors] == [
        f"line 3 ({prefix}q): 5 fields, but the header has 4 columns (the record runs on to line 5: "
        "an unbalanced quote?)"]
    assert set(stored_titles(sessions, prefix)) == {f"{prefix}{n}" for n in range(3)}


# ----------------------------------------------------------------------------- through the worker's job
def test_500_good_rows_then_one_bad_row_are_kept(worker: InProcessDispatcher, sessions: sessionmaker[Session],
                                                 shop: Path) -> None:
    """The review's case: the last chunk has no valid row (it used to fail the whole job)."""
    prefix = next(_prefixes)
    built = build_csv(prefix, [("valid", f"t{n}") for n in range(500)] + [("bad", "no_id")])
    path = shop / "catalog.csv"
    path.write_bytes(built.data)
    job = run_job(worker, sessions, path)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert (job.result["created"], job.result["rejected"]) == (500, 1)
    assert job.result["errors"] == ["line 502: missing external_id"]
    assert job.progress_done == 501
    assert stored_titles(sessions, prefix) == built.valid


def test_all_rows_bad_succeeds_with_a_report_per_line(worker: InProcessDispatcher,
                                                      sessions: sessionmaker[Session], shop: Path) -> None:
    prefix = next(_prefixes)
    built = build_csv(prefix, [("bad", kind) for kind in BAD_KINDS])
    path = shop / "catalog.csv"
    path.write_bytes(built.data)
    job = run_job(worker, sessions, path)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert (job.result["created"], job.result["rejected"]) == (0, len(BAD_KINDS))
    assert [int(e.split()[1].rstrip(":")) for e in job.result["errors"]] == built.bad_lines
    assert all(is_safe_text(e) for e in job.result["errors"])


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("empty.csv", b"", JobStatus.FAILED, "is empty"),
        ("header.csv", HEADER.encode(), JobStatus.SUCCEEDED, None),
        ("empty.jsonl", b"", JobStatus.SUCCEEDED, None),
        ("utf16.csv", "external_id,title,images\nx,y,a.png\n".encode("utf-16"), JobStatus.FAILED, "UTF-16"),
        ("utf16.jsonl", '{"external_id": "x"}\n'.encode("utf-16"), JobStatus.FAILED, "UTF-16"),
        ("utf32.csv", "external_id,images\n".encode("utf-32"), JobStatus.FAILED, "UTF-32"),
        ("binary.csv", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01,\x00\xfe\n\x00\xff", JobStatus.FAILED,
         "not UTF-8 text"),
        ("latin1-header.csv", b"external_id,caf\xe9,images\n", JobStatus.FAILED, "not UTF-8 text"),
        ("nul-header.csv", b"external_id,ti\x00tle,images\n", JobStatus.FAILED, "not UTF-8 text"),
        ("no-id-binary.csv", b"caf\xe9\x01,x\n", JobStatus.FAILED, "not UTF-8 text"),
        ("binary.jsonl", b"\xfd\xfe\xff\n\x00\x00\n{\xff}\n", JobStatus.SUCCEEDED, None),
    ],
)
def test_unreadable_sources_end_the_job(worker: InProcessDispatcher, sessions: sessionmaker[Session],
                                        shop: Path, name: str, data: bytes, status: JobStatus,
                                        message: str | None) -> None:
    path = shop / name
    path.write_bytes(data)
    job = run_job(worker, sessions, path)
    assert job.status is status, job.error
    assert is_safe_text(job.error)
    if message is not None:
        assert message in job.error and job.result == {}
    else:
        assert job.result["created"] == 0 and all(is_safe_text(e) for e in job.result["errors"])


def test_a_file_name_with_undecodable_bytes_fails_with_a_safe_message(
        worker: InProcessDispatcher, sessions: sessionmaker[Session], shop: Path) -> None:
    # The message quotes the path; surrogateescape'd bytes in it used to make fail_job raise.
    # The handler is called directly: run_task first stores the task's arguments on the job
    # (worker/flows/recovery.py), which PostgreSQL refuses for such a path before any import.
    path = shop / b"caf\xe9.csv".decode("utf-8", "surrogateescape")
    path.write_bytes(b"\xfe\xfd\x00binary")
    job_id = create_job(sessions, JobKind.IMPORT)
    result = run_import(worker.runtime, job_id, str(path))
    job = get_job(sessions, job_id)
    assert job.status is JobStatus.FAILED and job.error == result["error"]
    assert "caf\\xe9.csv: the header is not UTF-8 text" in job.error and is_safe_text(job.error)


def test_a_job_whose_path_cannot_be_stored_ends_failed(worker: InProcessDispatcher,
                                                       sessions: sessionmaker[Session], shop: Path) -> None:
    """On PostgreSQL recording the task (its arguments go into the job's JSONB params) used to
    raise for such a path, leaving the job queued for ever; SQLite must give the same answer."""
    path = shop / b"caf\xe9.csv".decode("utf-8", "surrogateescape")
    path.write_bytes(HEADER.encode())
    job = run_job(worker, sessions, path)
    assert job.status is JobStatus.FAILED and job.result == {}
    assert job.error == ("the lookalike.import_catalog task cannot be recorded: argument path "
                         f"'{safe_text(str(path))}' is not UTF-8 text without NUL")


def test_row_errors_quoting_bad_bytes_are_stored(worker: InProcessDispatcher, sessions: sessionmaker[Session],
                                                 shop: Path) -> None:
    """Ids that are lone surrogates (a CSV's undecodable bytes, JSON's \\udXXX) reach the job result."""
    prefix = next(_prefixes)
    csv_path = shop / "c.csv"
    csv_path.write_bytes(HEADER.encode() + b"caf\xe9,too,few\n" + f"{prefix}ok,fine,,a.png\n".encode())
    jsonl_path = shop / "j.jsonl"
    jsonl_path.write_text("\n".join([
        json.dumps({"external_id": "\udcff\ud800", "images": ["a.png"]}),
        json.dumps({"external_id": f"{prefix}j", "title": "x\u0000", "images": ["a.png"]}),
        json.dumps({"external_id": f"{prefix}k", "attributes": {"k": "\u0000"}, "images": ["a.png"]}),
        json.dumps({"external_id": f"{prefix}m", "n": 1, "images": ["a.png"]}),
        '{"external_id": "big", "n": ' + "9" * 5000 + "}",
        "[" * 100_000,
    ]) + "\n", encoding="utf-8")
    for path, created, lines in ((csv_path, 1, [2]), (jsonl_path, 1, [1, 2, 3, 5, 6])):
        job = run_job(worker, sessions, path)
        assert job.status is JobStatus.SUCCEEDED, job.error
        assert job.result["created"] == created
        assert [int(e.split()[1].rstrip(":")) for e in job.result["errors"]] == lines
        assert all(is_safe_text(e) for e in job.result["errors"])
    assert set(stored_titles(sessions, prefix)) == {f"{prefix}ok", f"{prefix}m"}


def test_an_unknown_format_name_fails_the_job(worker: InProcessDispatcher, sessions: sessionmaker[Session],
                                              shop: Path) -> None:
    path = shop / "c.csv"
    path.write_bytes(HEADER.encode())
    job = run_job(worker, sessions, path, fmt="xml")
    assert job.status is JobStatus.FAILED and "unknown catalog format 'xml'" in job.error


# ----------------------------------------------------------------------------- safe text
@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("plain, é ドレス\ttab\nnewline", "plain, é ドレス\ttab\nnewline"),
        (b"caf\xe9".decode("utf-8", "surrogateescape"), "caf\\xe9"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("nul \x00 bell \x07 del \x7f cr \r", "nul \\x00 bell \\x07 del \\x7f cr \\x0d"),
    ],
)
def test_safe_text(raw: str, safe: str) -> None:
    assert safe_text(raw) == safe
    safe.encode("utf-8")  # no surrogate is left
    assert is_safe_text(safe)
    assert len(safe_text("x" * 10 * MAX_MESSAGE)) == MAX_MESSAGE


def test_row_errors_and_format_errors_hold_only_safe_text() -> None:
    error = RowError(3, b"\xff".decode("utf-8", "surrogateescape"), "bad \udcff\x00")
    assert (error.external_id, error.reason, str(error)) == (None, "bad \\xff\\x00", "line 3: bad \\xff\\x00")
    assert RowError(4, "sku\t1", "fine").external_id == "sku\t1"
    assert str(CatalogFormatError("header \udcfe\x00")) == "header \\xfe\\x00"


# ----------------------------------------------------------------------------- any bytes (property-based)
_PROPERTY = settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
"""The fixtures (database, image folder) are shared by the examples on purpose: each
example imports under its own external-id prefix, so what another one stored is ignored."""

_title = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=20)
"""Any title a CSV can carry: newlines (quoted, multi-line records), other controls, emoji."""

_random_line = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"").replace(b'"', b"")
).filter(
    # A line of only separators and whitespace is a blank line, which is skipped, not bad.
    lambda b: any(cell.strip() for cell in b.decode("utf-8", "surrogateescape").split(","))
).map(bytes.hex)

_rows = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), _title),
        st.tuples(st.just("bad"), st.sampled_from(BAD_KINDS)),
        st.tuples(st.just("bytes"), _random_line),
    ),
    max_size=14,
)


@_PROPERTY
@given(rows=_rows, chunk_size=st.integers(1, 5))
def test_any_mixture_of_good_and_bad_rows(sessions: sessionmaker[Session], store: MediaStore, shop: Path,
                                          rows: list[tuple[str, str]], chunk_size: int) -> None:
    prefix = next(_prefixes)
    built = build_csv(prefix, rows)
    path = shop / f"{prefix}.csv"
    path.write_bytes(built.data)
    check_import(sessions, store, path, built, prefix, chunk_size)


@_PROPERTY
@given(body=st.binary(max_size=400), header=st.sampled_from([b"", HEADER.encode()]),
       suffix=st.sampled_from([".csv", ".jsonl"]))
def test_any_bytes_end_the_job(worker: InProcessDispatcher, sessions: sessionmaker[Session], shop: Path,
                               body: bytes, header: bytes, suffix: str) -> None:
    data = header + body
    path = shop / f"{next(_prefixes)}{suffix}"
    path.write_bytes(data)
    job = run_job(worker, sessions, path)
    assert is_safe_text(job.error)
    if job.status is JobStatus.FAILED:
        assert job.error and job.result == {}
        return
    lines = data.count(b"\n") + data.count(b"\r") + 1  # an upper bound on the physical lines
    numbers = [int(e.split()[1].rstrip(":")) for e in job.result["errors"]]
    assert numbers == sorted(numbers) and all(1 <= n <= lines for n in numbers)
    assert all(is_safe_text(e) for e in job.result["errors"])
    assert job.result["created"] + job.result["rejected"] <= lines
