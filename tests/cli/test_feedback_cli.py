"""`lookalike feedback add|list|export`: the API's storage and rules from the shell, on a real embedded database."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from alembic import command
from click.testing import CliRunner

from cli.main import lookalike
from core.config import Settings
from core.db import Item, make_engine, make_session_factory, session_scope
from migrations import alembic_config
from trainer.config import DataSource
from trainer.data.tuples import read_tuples_csv


def _home(tmp_path: Path) -> dict[str, str]:
    settings = Settings(home=tmp_path / "home")
    command.upgrade(alembic_config(settings.resolved_database_url), "head")
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as s:
        s.add_all(Item(external_id=name) for name in ("shirt-1", "shirt-2", "bag-1"))
    engine.dispose()
    return {"LOOKALIKE_HOME": str(settings.home), "LOOKALIKE_BROKER_URL": ""}


def test_add_list_and_export_round_trip(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    first = runner.invoke(lookalike, ["feedback", "add", "shirt-1", "bag-1", "dissimilar"], env=env)
    assert first.exit_code == 0, first.output
    assert first.output == "recorded #1: shirt-1 -> bag-1 dissimilar (merchandiser, weight 1)\n"
    click = runner.invoke(lookalike, ["feedback", "add", "shirt-1", "shirt-2", "similar", "--source", "click",
                                      "--weight", "0.5"], env=env)
    assert click.exit_code == 0, click.output
    again = runner.invoke(lookalike, ["feedback", "add", "shirt-1", "bag-1", "similar"], env=env)
    assert again.output.startswith("recorded #1: shirt-1 -> bag-1 similar"), again.output  # the same row, updated

    listed = runner.invoke(lookalike, ["feedback", "list", "--json"], env=env)
    rows = json.loads(listed.output)
    assert [(r["id"], r["query"], r["result"], r["judgement"], r["source"], r["weight"]) for r in rows] == [
        (1, "shirt-1", "bag-1", "similar", "merchandiser", 1.0),
        (2, "shirt-1", "shirt-2", "similar", "click", 0.5)]
    only_clicks = runner.invoke(lookalike, ["feedback", "list", "--source", "click"], env=env)
    assert len(only_clicks.output.splitlines()) == 1 and "shirt-2" in only_clicks.output

    out = tmp_path / "pairs.csv"
    exported = runner.invoke(lookalike, ["feedback", "export", "--out", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["a"], r["b"], r["y"]) for r in table] == [("shirt-1", "bag-1", "0"), ("shirt-1", "shirt-2", "0")]
    pairs = read_tuples_csv(out, DataSource.PAIRS)  # the trainer reads the export as a pairs file
    assert (pairs.ids, pairs.y) == ([("shirt-1", "bag-1"), ("shirt-1", "shirt-2")], [0, 0])
    to_stdout = runner.invoke(lookalike, ["feedback", "export", "--judgement", "dissimilar"], env=env)
    assert to_stdout.output.splitlines() == ["a,b,y,judgement,source,weight,id,created_at,updated_at"]


def test_unknown_items_self_pairs_and_bad_values_are_refused_and_store_nothing(tmp_path: Path) -> None:
    env, runner = _home(tmp_path), CliRunner()
    unknown = runner.invoke(lookalike, ["feedback", "add", "shirt-1", "nope", "dissimilar"], env=env)
    assert unknown.exit_code == 1 and "no active item with external id 'nope'" in unknown.output
    itself = runner.invoke(lookalike, ["feedback", "add", "bag-1", "bag-1", "similar"], env=env)
    assert itself.exit_code == 1 and "the same item 'bag-1'" in itself.output
    bad_judgement = runner.invoke(lookalike, ["feedback", "add", "shirt-1", "bag-1", "meh"], env=env)
    assert bad_judgement.exit_code == 2 and "'meh' is not one of 'similar', 'dissimilar'" in bad_judgement.output
    zero_weight = runner.invoke(lookalike, ["feedback", "add", "shirt-1", "bag-1", "similar", "--weight", "0"],
                                env=env)
    assert zero_weight.exit_code == 2, zero_weight.output
    assert runner.invoke(lookalike, ["feedback", "list"], env=env).output == "no feedback yet\n"
