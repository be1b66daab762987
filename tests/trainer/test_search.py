"""Recipe search: the space file, successive halving on a validation split, budget, resume, report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import Settings
from tests.trainer.test_train import HOLDOUT, fmnist_config
from trainer.config import ConfigError, TrainConfig
from trainer.data import DataContext, build_training_data
from trainer.runlog import read_jsonl
from trainer.search import DEFAULT_SEARCH_SPACE, SearchSpace, load_search_space, run_search


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_space_reads_candidates_and_grid() -> None:
    space = SearchSpace.from_dict({
        "rungs": [0.5, 1.0], "validation_fraction": 0.3, "base": ["data.augment=light"],
        "candidates": [{"name": "bh", "overrides": ["loss.miner=batch_hard"]}],
        "grid": {"loss.miner": ["semi_hard", "batch_all"], "loss.margin": [0.1, 0.3]},
    })
    assert [c.name for c in space.candidates] == [
        "bh", "miner=semi_hard,margin=0.1", "miner=semi_hard,margin=0.3", "miner=batch_all,margin=0.1",
        "miner=batch_all,margin=0.3"]
    assert space.candidates[2].overrides == ("loss.miner=semi_hard", "loss.margin=0.3")
    assert space.rung_epochs(8) == [4, 8] and space.rung_epochs(1) == [1]
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert load_search_space("default") == SearchSpace.from_yaml(DEFAULT_SEARCH_SPACE)


def test_candidates_score_at_most_validation_max_per_class_images_per_class() -> None:
    space = SearchSpace.from_dict({"validation_max_per_class": 50,
                                   "candidates": [{"name": "bh", "overrides": ["loss.miner=batch_hard"]}]})
    caps = {given: space.candidate_configs(TrainConfig.from_yaml(None, [f"data.eval_max_per_class={given}"]))["bh"]
            .data.eval_max_per_class for given in (0, 20, 400)}
    assert caps == {0: 50, 20: 20, 400: 50}  # the smaller of the config's cap and the search's
    every = SearchSpace.from_dict({"validation_max_per_class": 0, "candidates": [{"name": "a", "overrides": []}]})
    assert every.candidate_configs(TrainConfig.from_yaml(None, []))["a"].data.eval_max_per_class == 0


@pytest.mark.parametrize("data, message", [
    ({"candidates": []}, "no candidates"),
    ({"candidates": [{"overrides": ["epochs=1"]}], "colour": 1}, "unknown key"),
    ({"candidates": [{"name": "a", "overrides": ["epochs"]}]}, "key=value"),
    ({"candidates": [{"name": "a", "overrides": ["epochs=1"]}, {"name": "a", "overrides": ["epochs=2"]}]}, "unique"),
    ({"candidates": [{"name": "a", "overrides": ["epochs=1"]}], "rungs": [0.5, 0.25]}, "increasing"),
    ({"candidates": [{"name": "a", "overrides": ["epochs=1"]}], "validation_fraction": 0}, "validation_fraction"),
    ({"grid": {"loss.margin": []}}, "non-empty lists"),
    ({"candidates": [{"name": "a", "overrides": []}], "validation_max_per_class": -1}, "validation_max_per_class"),
    ({"grid": {"loss.margin": list(range(17))}}, "at most 16"),
])
def test_space_rejects_mistakes_with_the_reason(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict(data)


def test_a_bad_candidate_fails_before_anything_trains(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    space = SearchSpace.from_dict({"candidates": [{"name": "ok", "overrides": ["loss.margin=0.3"]},
                                                  {"name": "typo", "overrides": ["loss.minor=batch_hard"]}]})
    with pytest.raises(ConfigError, match="candidate 'typo'.*loss.minor"):
        run_search(fmnist_config(fashion_mnist_dir), space, tmp_path / "search", DataContext(Settings()))
    assert not (tmp_path / "search").exists()


def tiny(fashion_mnist_dir: Path, epochs: int = 2):
    return fmnist_config(fashion_mnist_dir, f"epochs={epochs}", "steps_per_epoch=4", "classes_per_batch=3",
                         "images_per_class=4", "data.max_per_class=30", "data.eval_max_per_class=30",
                         "model.embedding_dim=16", "seed=5")


def test_successive_halving_keeps_the_better_half_and_never_reads_the_holdout(
        tmp_path: Path, fashion_mnist_dir: Path) -> None:
    space = SearchSpace.from_dict({"rungs": [0.5, 1.0], "validation_fraction": 0.34, "candidates": [
        {"name": "frozen-lr", "overrides": ["optim.lr=1e-12"]},  # cannot learn: must be dropped first
        {"name": "batch_hard", "overrides": ["loss.miner=batch_hard"]},
        {"name": "batch_all", "overrides": ["loss.miner=batch_all"]},
    ]})
    cfg = tiny(fashion_mnist_dir)
    seen: list[tuple[int, int]] = []
    result = run_search(cfg, space, tmp_path / "search", DataContext(Settings()),
                        on_epoch=lambda done, planned: seen.append((done, planned)))
    runs = {r.candidate.name: r for r in result.runs}
    assert result.rungs == [1, 2]
    assert seen[-1] == (5, 5) and [d for d, _ in seen] == sorted(d for d, _ in seen)  # 3 x 1 + 2 x 1 epochs
    survivors = [n for n, r in runs.items() if r.epochs_done == 2]
    dropped = [n for n, r in runs.items() if r.epochs_done == 1]
    assert len(survivors) == 2 and len(dropped) == 1 and runs[dropped[0]].stopped_at == 1
    first_rung = {n: r.score_at(1) for n, r in runs.items()}
    assert first_rung[dropped[0]] == min(first_rung.values())
    assert result.winner.name == max(survivors, key=lambda n: runs[n].score_at(2))
    assert result.recipe.data.validation_fraction == 0.0  # the winner trains on every training class
    assert result.recipe.loss.miner.value == dict(c.split("=") for c in result.winner.overrides)["loss.miner"]
    # Candidates evaluated on training classes only: the holdout 6-9 never appears.
    for run in result.runs:
        assert "validation_fraction: 0.34" in (run.run_dir / "config.yaml").read_text()
    data = build_training_data(space.candidate_configs(cfg)["batch_hard"].data, cfg.model.spec(),
                               DataContext(Settings()))
    assert set(data.eval.labels).isdisjoint(HOLDOUT) and set(data.train.labels).isdisjoint(HOLDOUT)
    assert set(data.eval.labels).isdisjoint(data.train.labels)
    # The report: a JSONL row per candidate and epoch, the winner marked, and a PNG.
    rows = read_jsonl(tmp_path / "search" / "search.jsonl")
    assert len(rows) == 5 and {r["candidate"] for r in rows if r["winner"]} == {result.winner.name}
    assert (tmp_path / "search" / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.to_dict()["winner"] == result.winner.name

    # A retried search resumes: nothing is trained again, the same winner comes out.
    stamps = {r.candidate.name: (r.run_dir / "train_state.pt").stat().st_mtime_ns for r in result.runs}
    again = run_search(cfg, space, tmp_path / "search", DataContext(Settings()))
    assert again.winner == result.winner
    assert {r.candidate.name: (r.run_dir / "train_state.pt").stat().st_mtime_ns for r in again.runs} == stamps


def test_the_cpu_budget_stops_the_search_with_what_was_measured(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    space = SearchSpace.from_dict({"rungs": [0.5, 1.0], "cpu_budget_minutes": 1e-6, "validation_fraction": 0.34,
                                   "candidates": [{"name": "a", "overrides": ["loss.margin=0.2"]},
                                                  {"name": "b", "overrides": ["loss.margin=0.3"]}]})
    result = run_search(tiny(fashion_mnist_dir), space, tmp_path / "search", DataContext(Settings()))
    assert result.budget_exhausted
    assert result.winner.name == "a"  # the only one measured
    runs = {r.candidate.name: r for r in result.runs}
    assert runs["a"].epochs_done == 1 and runs["b"].epochs_done == 0 and "budget" in runs["b"].note
