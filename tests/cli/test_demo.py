"""`make demo` runs `lookalike demo`: the whole product on the embedded setup."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from cli.main import lookalike


def test_demo_goes_from_sample_catalog_to_similar_items(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    runner = CliRunner()
    env = {"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_BROKER_URL": ""}
    result = runner.invoke(lookalike, ["demo", "--limit", "1200", "--epochs", "2", "--steps-per-epoch", "25",
                                       "--examples", "3"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1200 created" in result.output
    assert re.search(r"serving index i-\S+ \(1200 images", result.output)
    # three example items, five results each, mostly of the query's own category
    same = [int(m) for m in re.findall(r"-> (\d)/5 same category", result.output)]
    assert len(same) == 3, result.output
    rate = re.search(r"over 200 catalog items, (\d+)% of the top-5", result.output)
    assert rate and int(rate.group(1)) >= 60, result.output
    # a second run reuses the catalog (idempotent import) and retrains against the active model
    again = runner.invoke(lookalike, ["demo", "--limit", "1200", "--epochs", "1", "--steps-per-epoch", "5"],
                          env=env, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 1200 unchanged" in again.output
