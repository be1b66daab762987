"""``lookalike catalog`` through click's CliRunner, on a fresh embedded setup."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.catalog import catalog
from cli.context import CliContext
from cli.main import lookalike
from core.config import Settings
from tests.fixtures.catalog import write_csv, write_image


@pytest.fixture
def run(settings: Settings):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(catalog, [str(a) for a in args], obj=CliContext(settings), catch_exceptions=False)

    return invoke


def test_import_prints_summary_and_every_row_error(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_image(tmp_path / "a.png", 1)
    path = write_csv(tmp_path / "c.csv", ["external_id", "title", "images"],
                     [["x", "Ünïcödé", "a.png"], ["y", "Y", "missing.png"], ["x", "again", "a.png"]])
    result = run("import", path)
    assert result.exit_code == 0, result.output
    assert "1 created, 0 updated, 0 unchanged" in result.stdout
    assert "error: line 3 (y): image 'missing.png': file not found" in result.stderr
    assert "error: line 4 (x): duplicate external_id" in result.stderr

    again = run("import", path, "--format", "csv")
    assert "0 created, 0 updated, 1 unchanged" in again.stdout
    assert run("import", path, "--strict").exit_code == 1

    listed = run("list")
    assert listed.stdout.splitlines() == ["x\t-\tactive\t1 image(s)\tÜnïcödé"]
    assert "showing 1-1 of 1" in listed.stderr


def test_nothing_imported_or_unreadable_exits_1(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "c.csv", ["external_id", "images"], [["x", "missing.png"]])
    result = run("import", path)
    assert result.exit_code == 1
    assert "0 created" in result.stdout and "1 rejected" in result.stdout
    bad = write_csv(tmp_path / "d.csv", ["sku", "images"], [["x", "a.png"]])
    result = run("import", bad)
    assert result.exit_code == 1
    assert "no external_id column" in result.stderr
    empty = write_csv(tmp_path / "e.csv", ["external_id", "images"], [])
    assert run("import", empty).exit_code == 0


def test_sample_list_and_delete(run, fashion_mnist_dir: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("sample", "fashion-mnist", "--limit", "12", "--split", "test", "--dataset-dir", fashion_mnist_dir)
    assert result.exit_code == 0, result.output
    assert "12 created" in result.stdout
    bags = run("list", "--category", "bag").stdout.splitlines()
    assert len(bags) == 1 and bags[0].startswith("fmnist-test-") and "\tbag\tactive\t" in bags[0]
    victim = bags[0].split("\t")[0]

    deleted = run("delete", victim, "fmnist-test-99999")
    assert deleted.exit_code == 1
    assert f"{victim}: deleted" in deleted.stdout
    assert "fmnist-test-99999: not found" in deleted.stderr
    assert run("list", "--category", "bag").stdout == ""
    assert run("list", "--status", "deleted").stdout.startswith(victim)
    assert run("delete", victim).stdout.strip() == f"{victim}: was already deleted"

    revived = run("sample", "fashion-mnist", "--limit", "12", "--split", "test", "--dataset-dir", fashion_mnist_dir)
    assert "0 created, 1 updated, 11 unchanged" in revived.stdout


def test_registered_on_the_main_command(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    env = {"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_DATABASE_URL": "", "LOOKALIKE_LOG_LEVEL": "WARNING"}
    result = CliRunner().invoke(lookalike, ["catalog", "sample", "fashion-mnist", "--limit", "3",
                                            "--dataset-dir", str(fashion_mnist_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert "3 created" in result.stdout
    missing = CliRunner().invoke(lookalike, ["catalog", "sample", "fashion-mnist", "--dataset-dir",
                                             str(tmp_path / "nowhere")], env=env)
    assert missing.exit_code == 1
    assert "not found" in missing.stderr
