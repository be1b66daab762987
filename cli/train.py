"""``lookalike train | evaluate | models``: train, score and manage embedding model versions.

``train`` runs in this process (a GPU machine, or a CPU for small models); the
scheduled and API-triggered retraining goes through the worker (``lookalike
retrain``). Every trained run is registered as a *candidate*; ``models activate``
or a promotion by the retrain flow makes it the model the next reindex uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from cli.context import CliContext
from core.config import DeviceChoice
from core.embedding import Backbone, load_model, resolve_device
from core.registry import (
    RegistryError,
    activate_model,
    active_model,
    checkpoint_path,
    get_model,
    list_models,
    new_version,
    set_model_metrics,
)
from core.rerank import Rerank
from core.runs import publish_run
from trainer.augment import eval_pipeline
from trainer.config import ConfigError, DataSource, TrainConfig
from trainer.data import DataContext, ImageDataset
from trainer.data.folder import scan_folder
from trainer.evaluate import evaluate_query_reference
from trainer.register import (
    NoHoldoutError,
    compare_versions,
    evaluate_version,
    register_trained,
    register_untrained,
    untrained_spec,
)
from trainer.retrieval_metrics import RetrievalMetrics
from trainer.run_dir import RunPaths
from trainer.search import load_search_space, planned_epochs, run_search
from trainer.train import train as run_training


def _use_threads(ctx: CliContext) -> None:
    """Apply LOOKALIKE_TORCH_THREADS (this command is the process's top level)."""
    if ctx.settings.torch_threads > 0:
        torch.set_num_threads(ctx.settings.torch_threads)


_SHOWN = ("precision_at_1", "r_precision", "map_at_r", "recall@5", "recall@10", "n_queries")


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML training config (examples in trainer/configs/).")
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: <artifacts>/models/runs/<version>).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the interrupted run in this directory, with its saved config.")
@click.option("--search", "search", metavar="FILE|default",
              help="First choose the recipe: successive halving over the candidates of this search space "
                   "(a YAML file, or `default` for trainer/search/default.yaml) on a class-disjoint "
                   "validation split of the training classes; then train the winner on all of them.")
@click.option("--version", help="Model version name to register (default: generated).")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Record the trained model in the registry as a candidate.")
@click.option("--activate", is_flag=True, help="Also make it the active model.")
@click.pass_obj
def train(ctx: CliContext, config_path: Path | None, overrides: tuple[str, ...], out: Path | None,
          resume_dir: Path | None, search: str | None, version: str | None, register: bool,
          activate: bool) -> None:
    """Train an embedding model: OVERRIDES are dotted key=value pairs, e.g. optim.lr=3e-4 epochs=5."""
    if resume_dir is not None and (config_path is not None or out is not None or search is not None):
        raise click.UsageError("--resume takes the config and directory of the run it continues")
    try:
        if resume_dir is not None:
            cfg = TrainConfig.from_yaml(RunPaths(resume_dir).config, overrides)
        else:
            if config_path is None:
                raise click.UsageError("give --config FILE (see trainer/configs/) or --resume DIR")
            cfg = TrainConfig.from_yaml(config_path, overrides)
        if cfg.device is DeviceChoice.AUTO and ctx.settings.device is not DeviceChoice.AUTO:
            cfg = cfg.with_overrides([f"device={ctx.settings.device.value}"])  # LOOKALIKE_DEVICE decides
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    _use_threads(ctx)
    version = version or (resume_dir.name if resume_dir is not None else new_version("m"))
    run_dir = resume_dir or out or ctx.settings.models_dir / "runs" / version
    needs_db = register or cfg.data.source in (DataSource.CATALOG, DataSource.PAIRS, DataSource.TRIPLETS)
    data_ctx = DataContext(ctx.settings, ctx.sessions if needs_db else None)
    try:
        if search is not None:
            cfg = _searched_recipe(cfg, search, Path(run_dir) / "search", data_ctx)
        result = run_training(cfg, run_dir, data_ctx, resume=resume_dir is not None)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"run directory: {result.run_dir}")
    published = publish_run(ctx.settings, Path(result.run_dir))
    if published:
        click.echo(f"published to the artifact store as {published}")
    click.echo(_metrics_line(result.final_metrics) or "no holdout evaluation")
    if register:
        registered = register_trained(ctx.sessions, ctx.settings, result, version=version)
        click.echo(f"registered model {registered} (candidate)")
        if activate:
            activate_model(ctx.sessions, registered)
            click.echo(f"activated {registered}; run `lookalike reindex` to index the catalog with it")


def _searched_recipe(cfg: TrainConfig, search: str, search_dir: Path, data_ctx: DataContext) -> TrainConfig:
    """The winning recipe of ``search`` on ``cfg``'s training classes, with a bar over candidate-epochs.

    The candidates train in ``search_dir`` (rerunning the same command resumes them); the report
    (search.jsonl, search.png) lands there too. Raises ConfigError for a bad space.
    """
    space = load_search_space(search)
    with tqdm(total=planned_epochs(space, cfg), desc="recipe search", unit="epoch", disable=not cfg.progress) as bar:
        def advance(done: int, _planned: int) -> None:
            bar.update(done - bar.n)

        found = run_search(cfg, space, search_dir, data_ctx, on_epoch=advance)
    scores = ", ".join(f"{r.candidate.name} {r.curve[-1]['map_at_r']:.3f}" for r in found.runs if r.curve)
    click.echo(f"recipe search: {found.winner.name} wins (validation MAP@R: {scores}); "
               f"report in {found.report_dir}")
    if found.budget_exhausted:
        click.echo("recipe search: the CPU budget ran out; ranked on what was measured")
    return found.recipe


@click.command()
@click.option("--model", "version", required=True, help="Model version, or 'active'.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate on this config's holdout instead of the model's own.")
@click.argument("overrides", nargs=-1)
@click.option("--queries", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of class sub-folders used as queries (with --references).")
@click.option("--references", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of class sub-folders searched by the queries.")
@click.option("--save", is_flag=True, help="Store the holdout metrics with the model version.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def evaluate(ctx: CliContext, version: str, config_path: Path | None, overrides: tuple[str, ...],
             queries: Path | None, references: Path | None, save: bool, as_json: bool) -> None:
    """Retrieval metrics of a model: leave-one-out on a holdout, or queries against references."""
    version = _resolve_version(ctx, version)
    _use_threads(ctx)
    device = resolve_device(ctx.settings.device)
    try:
        if (queries is None) != (references is None):
            raise click.UsageError("--queries and --references go together")
        if queries is not None and references is not None:
            metrics = _query_reference(ctx, version, queries, references, device)
        else:
            cfg = TrainConfig.from_yaml(config_path, overrides) if config_path or overrides else None
            metrics = evaluate_version(ctx.sessions, ctx.settings, version, config=cfg, device=device)
    except (ConfigError, NoHoldoutError, RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if save:
        set_model_metrics(ctx.sessions, version, metrics.to_dict())
    click.echo(json.dumps(metrics.to_dict(), indent=2) if as_json else f"{version}: {_metrics_line(metrics.to_dict())}")


def _query_reference(ctx: CliContext, version: str, queries: Path, references: Path, device: Any) -> RetrievalMetrics:
    record = get_model(ctx.sessions, version)
    model, _ = load_model(checkpoint_path(ctx.settings, record.checkpoint_path, record.version))
    s = ctx.settings
    sets = [ImageDataset(scan_folder(p, max_pixels=s.max_image_pixels, max_bytes=s.max_image_bytes),
                         eval_pipeline(model.spec)) for p in (queries, references)]
    return evaluate_query_reference(model.to(device), sets[0], sets[1], device=device, rerank=Rerank.from_settings(s))


@click.group()
def models() -> None:
    """Embedding model versions: list, activate, compare, register an untrained one."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_command(ctx: CliContext, as_json: bool) -> None:
    """Every model version, newest first, with its holdout metrics."""
    rows = list_models(ctx.sessions)
    if as_json:
        click.echo(json.dumps([_row(m) for m in rows], indent=2))
        return
    if not rows:
        click.echo("no models yet: `lookalike train --config ...` or `lookalike models init --backbone ...`")
        return
    click.echo(f"{'version':<28} {'status':<9} {'backbone':<18} {'dim':>4} {'P@1':>6} {'MAP@R':>6}  created")
    for m in rows:
        r = _row(m)
        click.echo(f"{r['version']:<28} {r['status']:<9} {r['backbone']:<18} {r['dim']:>4} "
                   f"{_num(r['precision_at_1']):>6} {_num(r['map_at_r']):>6}  {r['created_at'][:19]}")


@models.command()
@click.argument("version")
@click.pass_obj
def activate(ctx: CliContext, version: str) -> None:
    """Make VERSION the active model (the next reindex embeds with it)."""
    try:
        activate_model(ctx.sessions, version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"activated {version}; run `lookalike reindex` to index the catalog with it")


@models.command()
@click.argument("a")
@click.argument("b")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Holdout to compare on (default: the one A, or else B, was trained with).")
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def compare(ctx: CliContext, a: str, b: str, config_path: Path | None, overrides: tuple[str, ...],
            as_json: bool) -> None:
    """Score versions A and B on the same holdout."""
    a, b = _resolve_version(ctx, a), _resolve_version(ctx, b)
    _use_threads(ctx)
    try:
        cfg = TrainConfig.from_yaml(config_path, overrides) if config_path or overrides else None
        result = compare_versions(ctx.sessions, ctx.settings, a, b, config=cfg,
                                  device=resolve_device(ctx.settings.device))
    except (ConfigError, NoHoldoutError, RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"metrics": result.metrics, "map_at_r_delta": result.delta()}, indent=2))
        return
    click.echo(f"{'metric':<16} {a:>28} {b:>28}")
    for key in _SHOWN:
        click.echo(f"{key:<16} {_num(result.metrics[a].get(key)):>28} {_num(result.metrics[b].get(key)):>28}")
    click.echo(f"MAP@R {b} - {a} = {result.delta():+.4f}")


@models.command()
@click.option("--backbone", type=click.Choice([b.value for b in Backbone]), required=True)
@click.option("--pretrained", is_flag=True, help="ImageNet weights for the trunk (from local files only).")
@click.option("--embedding-dim", type=click.IntRange(min=1),
              help="Default: the trunk's feature size with --pretrained (the exact frozen features), else 128.")
@click.option("--input-size", type=click.IntRange(min=16), help="Default: the backbone's natural size.")
@click.option("--version", help="Version name (default: generated).")
@click.option("--activate", "make_active", is_flag=True,
              help="Make it the active model (done anyway when there is no active model yet).")
@click.pass_obj
def init(ctx: CliContext, backbone: str, pretrained: bool, embedding_dim: int | None, input_size: int | None,
         version: str | None, make_active: bool) -> None:
    """Register a model without training it, so the catalog can be indexed right away."""
    try:
        spec = untrained_spec(backbone, pretrained=pretrained, embedding_dim=embedding_dim, input_size=input_size)
        registered = register_untrained(ctx.sessions, ctx.settings, spec, version=version)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"registered untrained model {registered} ({backbone}, {spec.embedding_dim}-d, pretrained={pretrained})")
    if make_active or active_model(ctx.sessions) is None:
        activate_model(ctx.sessions, registered)
        click.echo(f"activated {registered}; run `lookalike reindex` to index the catalog with it")


def _resolve_version(ctx: CliContext, version: str) -> str:
    if version != "active":
        return version
    current = active_model(ctx.sessions)
    if current is None:
        raise click.ClickException("there is no active model yet")
    return current.version


def _row(m: Any) -> dict[str, Any]:
    return {"version": m.version, "status": m.status.value, "backbone": m.spec.get("backbone", "?"),
            "dim": m.spec.get("embedding_dim", "?"), "precision_at_1": m.metrics.get("precision_at_1"),
            "map_at_r": m.metrics.get("map_at_r"), "checkpoint_path": m.checkpoint_path,
            "created_at": m.created_at.isoformat(), "notes": m.notes}


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _metrics_line(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k}={_num(metrics[k])}" for k in _SHOWN if k in metrics)
