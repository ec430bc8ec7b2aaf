"""The ``layerprune`` command: a thin typer layer over the library API (no logic of its own).

Exit codes: 0 success, 2 bad input (unknown name, bad option, missing file), 1 anything else.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from layerprune.calibration import Calibration
from layerprune.errors import LayerpruneError
from layerprune.io import output_error

app = typer.Typer(
    name="layerprune",
    help="Prune whole layers out of deep networks, chosen by interchangeable criteria.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)
CHECKPOINT_HELP = "Load these weights first: a file, or an http(s) URL (downloaded once into torch hub's cache, verified)."


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`LayerpruneError` into one red line on stderr and its exit code (2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LayerpruneError as exc:
            _say_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a write outside layerprune's own helpers (a plot, TensorBoard, ...)
            error = output_error(exc.filename, exc) if exc.filename else None
            if error is None:
                raise
            _say_error(error)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def _say_error(exc: Exception) -> None:
    if _is_rank0():  # under torchrun, one message for the job, not one per process
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)


def log_line(message: str) -> None:
    """One log line, never wrapped by rich: in CI logs and ``> file`` redirects an epoch stays on one
    line (``<stage> epoch N/M ...``) that tools can grep; a terminal wraps it by itself."""
    console.print(message, highlight=False, soft_wrap=True)


def _is_rank0() -> bool:
    """Rank 0 under torchrun, or a plain process: the one that speaks for the job."""
    from layerprune.distributed import launched_rank

    return launched_rank() == 0


def _version_callback(value: bool) -> None:
    if value:
        from layerprune.version import __version__

        console.print(f"layerprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Prune whole layers out of deep networks, chosen by interchangeable criteria."""


@app.command("models")
@user_errors
def models_cmd(
    pattern: str = typer.Argument("cifar_*", help="timm name or wildcard, e.g. 'cifar_*' or '*resnet*'."),
    params: bool = typer.Option(False, "--params", help="Build each model to count its parameters."),
) -> None:
    """List timm models (the CIFAR models layerprune registers by default)."""
    import timm

    from layerprune.models import list_models
    from layerprune.surgery import count_params

    names = list_models(pattern)
    table = Table(title=f"models matching {pattern!r} ({len(names)})")
    table.add_column("model")
    table.add_column("family")
    table.add_column("input size")
    if params:
        table.add_column("params", justify="right")
    for name in names:
        cfg = timm.get_pretrained_cfg(name)
        size = "×".join(map(str, cfg.input_size)) if cfg is not None else "?"
        row = [name, timm.models.model_entrypoint(name).__module__.rsplit('.', 1)[-1], size]
        if params:
            row.append(f"{count_params(timm.create_model(name)):,}")
        table.add_row(*row)
    console.print(table)


@app.command("datasets")
@user_errors
def datasets_cmd(
    name: Optional[str] = typer.Argument(None, help="Show one dataset's options and defaults."),
) -> None:
    """List the datasets, or one dataset's options."""
    from layerprune.data import DATASETS, dataset_description, dataset_options

    if name is None:
        table = Table(title="datasets")
        table.add_column("name")
        table.add_column("description")
        for ds in DATASETS.names():
            table.add_row(ds, dataset_description(ds))
        console.print(table)
        return
    options = dataset_options(name)
    table = Table(title=f"dataset {DATASETS.canonical(name)!r} options")
    table.add_column("option")
    table.add_column("default")
    for key, default in options.items():
        table.add_row(key, repr(default))
    console.print(table)


def _parse_pairs(pairs: list[str], flag: str = "--model-arg") -> dict[str, Any]:
    """``["shortcut=B", "num_classes=100"]`` → typed kwargs (values parsed as YAML scalars)."""
    import yaml

    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LayerpruneError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            kwargs[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LayerpruneError(f"{flag} {pair!r}: cannot parse the value") from None
    return kwargs


def _load_plugins(specs: list[str], strict: bool) -> None:
    """Load installed entry points and ``--plugin`` specs (failures warn; call inside
    :class:`_plugin_warnings`)."""
    from layerprune.criteria import load_plugins

    load_plugins(specs, strict=strict)


class _plugin_warnings:
    """Print each plugin failure as one yellow line on stderr instead of a Python warning."""

    def __enter__(self):
        import warnings

        from layerprune.criteria import PluginWarning

        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always", PluginWarning)
        return self

    def __exit__(self, *exc):
        from layerprune.criteria import PluginWarning

        self._catch.__exit__(*exc)
        for record in self._records:
            if issubclass(record.category, PluginWarning) and _is_rank0():
                err_console.print(f"[yellow]warning:[/] {record.message}", highlight=False, soft_wrap=True)
        return False


LEVEL_HELP = "block (the model's own blocks) or sublayer (the residual branches inside them: attn, mlp)."


@app.command("inspect")
@user_errors
def inspect_cmd(
    model_name: str = typer.Argument(..., metavar="MODEL", help="timm model name, e.g. cifar_resnet56, or "
                                     "hf:PATH_OR_ID for a transformers model (a folder or a hub id; extra [hf])."),
    input_size: Optional[tuple[int, int, int]] = typer.Option(
        None, "--input-size", metavar="C H W", help="Input size (default: the model's pretrained_cfg)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", metavar="KEY=VALUE",
                                        help="Model keyword argument, repeatable (e.g. -a shortcut=B)."),
    level: str = typer.Option("block", "--level", help=LEVEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the blocks of MODEL: which can be removed, why or why not, and what each costs."""
    import json

    import torch

    from layerprune.models import create_model
    from layerprune.surgery import find_blocks, model_cost
    from layerprune.surgery import default_input
    from layerprune.surgery.find import check_level

    check_level(level)

    from layerprune.models.hf import is_hf_name, load_hf_model

    if is_hf_name(model_name):
        if checkpoint or input_size or model_arg:
            raise LayerpruneError(f"{model_name}: --checkpoint, --input-size and --model-arg are for timm models; a "
                                  "transformers model is its folder or hub id")
        model = load_hf_model(model_name)
    else:
        model = create_model(model_name, checkpoint=checkpoint, **_parse_pairs(model_arg)).eval()
    x = torch.randn(1, *input_size) if input_size else default_input(model)
    blocks = find_blocks(model, x, level=level)
    cost = model_cost(model, x)
    if as_json:
        print(json.dumps({"model": model_name, "input_size": list(x.shape[1:]), **cost.to_dict(),
                          "blocks": [b.to_dict() for b in blocks]}, indent=2))
        return
    table = Table(title=f"{model_name}: {cost.params:,} params, {cost.macs / 1e6:,.1f}M MACs, "
                        f"input {'×'.join(map(str, x.shape[1:]))}")
    for col, justify in (("block", "left"), ("stage", "left"), ("removable", "left"),
                         ("reason", "left"), ("params", "right"), ("MACs %", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for b in blocks:
        mark = "[green]yes[/]" if b.removable else "[yellow]collapse[/]" if b.collapsible else "[red]no[/]"
        table.add_row(b.name, b.stage, mark, b.reason, f"{b.params:,}", f"{100 * b.macs_share:.1f}")
    console.print(table)
    n_rm, n_col = sum(b.removable for b in blocks), sum(b.collapsible for b in blocks)
    console.print(f"{n_rm} removable, {n_col} collapsible, {len(blocks) - n_rm - n_col} fixed")


PLUGIN_HELP = "Criterion plugin: a .py file, a module or module:attr (repeatable)."
STRICT_HELP = "Fail (exit 2) when a plugin cannot be loaded, instead of skipping it."


@app.command("criteria")
@user_errors
def criteria_cmd(
    plugin: list[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every criterion with its description and origin (builtin, package or file)."""
    import json

    from layerprune.criteria import list_criteria

    with _plugin_warnings():
        _load_plugins(plugin, strict)
        infos = list_criteria(strict=strict)
    if as_json:
        print(json.dumps([{"name": i.name, "description": i.description, "origin": i.origin,
                           "aliases": list(i.aliases)} for i in infos], indent=2))
        return
    table = Table(title=f"criteria ({len(infos)})")
    for col in ("name", "description", "origin"):
        table.add_column(col, overflow="fold")
    for info in infos:
        table.add_row(info.name, info.description, info.origin)
    console.print(table)


@app.command("score")
@user_errors
def score_cmd(
    model_name: str = typer.Argument(..., metavar="MODEL", help="timm model name, e.g. cifar_resnet56, or "
                                     "hf:PATH_OR_ID for a transformers causal LM (scored on --data text; extra [hf])."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset name (see: layerprune datasets)."),
    criterion: str = typer.Option("modularity", "--criterion", "-c", help="Criterion (see: layerprune criteria)."),
    param: list[str] = typer.Option([], "--param", "-p", metavar="KEY=VALUE", help="Criterion parameter (repeatable)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", metavar="KEY=VALUE", help="Model keyword argument (repeatable)."),
    data_arg: list[str] = typer.Option([], "--data-arg", metavar="KEY=VALUE", help="Dataset option (repeatable), e.g. root=./data."),
    split: str = typer.Option(Calibration.split, "--split", help="Calibration split: val (held out of train), test or train."),
    samples: int = typer.Option(Calibration.samples, "--samples", help="Samples per calibration batch."),
    batches: int = typer.Option(Calibration.batches, "--batches", help="Calibration batches (mean and std over them)."),
    seed: int = typer.Option(Calibration.seed, "--seed", help="Seed for drawing calibration samples (and the model's initial weights)."),
    rule: Optional[str] = typer.Option(None, "--rule", help="threshold, count or budget (default: the criterion's)."),
    rule_arg: list[str] = typer.Option([], "--rule-arg", "-r", metavar="KEY=VALUE", help="Rule parameter, e.g. threshold=0.03, k=8, macs=0.5."),
    protect: list[str] = typer.Option([], "--protect", help="Never remove this block (repeatable)."),
    collapse: bool = typer.Option(False, "--collapse", help="Allow collapsing blocks that change shape: to their shortcut, or to one without parameters where they have none."),
    level: str = typer.Option("block", "--level", help=LEVEL_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    plugin: list[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="PNG", help="Write the curve (or a bar chart) here."),
) -> None:
    """Score the blocks of MODEL on calibration data and show what the rule would remove."""
    import json

    from layerprune.app import score_model
    from layerprune.surgery.find import check_level

    check_level(level)
    with _plugin_warnings():
        _load_plugins(plugin, strict)
        report = score_model(
            model_name, data, criterion, criterion_params=_parse_pairs(param, "--param"),
            checkpoint=checkpoint, model_args=_parse_pairs(model_arg), data_args=_parse_pairs(data_arg, "--data-arg"),
            rule=rule, rule_params=_parse_pairs(rule_arg, "--rule-arg"), protect=protect, collapse=collapse, level=level,
            device=device, progress=not as_json and sys.stderr.isatty(),
            calibration=Calibration(split=split, samples=samples, batches=batches, seed=seed),
        )
    if plot:
        report.plot(plot)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return
    result = report.result
    rank = {name: i + 1 for i, (name, _) in enumerate(result.ranked())}
    cal = report.calibration
    table = Table(title=f"{model_name} on {data} ({cal['split']}: {cal['batches']}×{cal['samples']}), "
                        f"criterion {result.criterion}")
    for col, justify in (("block", "left"), ("stage", "left"), ("removable", "left"), ("score", "right"),
                         ("rank", "right"), ("params", "right"), ("MACs %", "right"), ("remove", "left")):
        table.add_column(col, justify=justify)
    for b in report.blocks:
        if not b.stage:
            continue
        score = result.scores.get(b.name)
        mark = "yes" if b.removable else "collapse" if b.collapsible else "no"
        table.add_row(b.name, b.stage, mark, "—" if score is None else f"{score:.4f}",
                      str(rank.get(b.name, "")), f"{b.params:,}", f"{100 * b.macs_share:.1f}",
                      "[bold red]remove[/]" if b.name in report.removed else "")
    console.print(table)
    rule_text = ", ".join(f"{k}={v}" for k, v in report.rule.items() if k != "rule")
    console.print(f"rule {report.rule['rule']}({rule_text}) removes {len(report.removed)} blocks: "
                  f"params −{100 * report.params_share:.1f}%, MACs −{100 * report.macs_share:.1f}%")
    if report.removed:
        console.print("  " + " ".join(report.removed))
    if plot:
        console.print(f"plot written to {plot}")


SET_HELP = "Override a recipe key, typed and validated (repeatable), e.g. --set finetune.epochs=2."


@app.command("validate")
@user_errors
def validate_cmd(
    recipe: str = typer.Argument(..., metavar="RECIPE_OR_SUITE", help="Recipe or suite YAML file."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE",
                                   help=SET_HELP + " On a suite, recipe keys are set in every setting."),
    setting: list[str] = typer.Option([], "--setting", metavar="NAME", help="A suite: check only this setting (repeatable)."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    show: bool = typer.Option(False, "--show", help="Print the resolved recipe (every default filled in); "
                              "for a suite, each setting's."),
) -> None:
    """Check a recipe, or every setting of a suite as bench reads it: every problem at once, as
    dotted key paths (settings.NAME.key on a suite)."""
    import yaml

    from layerprune.bench.suite import is_suite_file, load_suite
    from layerprune.recipe import load_recipe
    from layerprune.recipe.load import read_yaml

    with _plugin_warnings():
        if is_suite_file(read_yaml(recipe)):
            suite = load_suite(recipe, set_, only=setting, strict_plugins=strict)
            resolved = suite.recipes
        else:
            if setting:
                raise LayerpruneError(f"--setting: {recipe} is a recipe, not a suite (it has no settings:)")
            resolved = [load_recipe(recipe, set_, strict_plugins=strict)]
            suite = None
    if show:
        dumped = {r.name: r.model_dump(mode="json") for r in resolved} if suite else resolved[0].model_dump(mode="json")
        print(yaml.safe_dump(dumped, sort_keys=False), end="")
    elif suite is not None:
        names = ", ".join(r.name for r in resolved)
        console.print(f"[green]ok[/]: {recipe} (suite {suite.name}, {len(resolved)} "
                      f"setting{'s' if len(resolved) != 1 else ''}: {names})", highlight=False, soft_wrap=True)
    else:
        r = resolved[0]
        console.print(f"[green]ok[/]: {recipe} ({r.model.label} on {r.data.dataset}, criterion {r.criterion.name})",
                      highlight=False, soft_wrap=True)


@app.command("run")
@user_errors
def run_cmd(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE", help=SET_HELP),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (default: the recipe's output_dir, or runs/NAME)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over in a new run directory instead of resuming."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Run a recipe: pretrain, score, select, prune, repair, finetune, eval, export (resumable)."""
    from layerprune.recipe import load_recipe, run_recipe
    from layerprune.recipe.summary import summary_table

    with _plugin_warnings():
        resolved = load_recipe(recipe, set_, strict_plugins=strict)
    result = run_recipe(resolved, out=out, fresh=fresh, progress=sys.stderr.isatty(), log=log_line)
    if not _is_rank0():
        return
    console.print(summary_table(result.metrics, title=f"{resolved.name}: {resolved.model.label} on {resolved.data.dataset}"))
    console.print(f"outputs in {result.run_dir.path}/ (report.md, metrics.json, model/)")


@app.command("bench")
@user_errors
def bench_cmd(
    suite: str = typer.Argument(..., metavar="SUITE", help="Suite YAML (recipes/suites/), or a recipe with a bench: section."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE",
                                   help=SET_HELP + " On a suite, recipe keys are set in every setting."),
    out: Optional[str] = typer.Option(None, "--out", help="Bench directory (default: the suite's output_dir, or runs/NAME)."),
    setting: list[str] = typer.Option([], "--setting", metavar="NAME", help="Run only this setting of the suite (repeatable)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over in a new directory instead of resuming."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Compare criteria (and width pruning) in every setting of a suite: criterion × budget × seed,
    with a leaderboard. Under torchrun, the ranks share the trials."""
    from layerprune.bench import load_suite, run_suite
    from layerprune.bench.report import leaderboard_table, setting_table

    with _plugin_warnings():
        resolved = load_suite(suite, set_, only=setting, strict_plugins=strict)
    result = run_suite(resolved, out=out, fresh=fresh, progress=sys.stderr.isatty(), log=log_line)
    if result is None:  # a rank other than 0: rank 0 reports
        return
    for record in result.report["settings"]:
        console.print(setting_table(record))
    console.print(leaderboard_table(result.report))
    console.print(f"outputs in {result.path}/ (report.md, leaderboard.png, trials.csv, trials.json, settings/)")


@app.command("export")
@user_errors
def export_cmd(
    source: str = typer.Argument(..., metavar="MODEL_DIR_OR_RUN_DIR",
                                 help="A pruned-model folder (config.json) or a run directory (its model/)."),
    format_: list[str] = typer.Option([], "--format", "-f", metavar="FORMAT",
                                      help="onnx, torchscript or exported (torch.export); repeatable (default: all three)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the files (default: MODEL/export)."),
    atol: float = typer.Option(1e-4, "--atol", min=0, help="Check: |exported − PyTorch| ≤ atol + rtol·|PyTorch|."),
    rtol: float = typer.Option(1e-3, "--rtol", min=0, help="Check: the relative part of the tolerance."),
    samples: int = typer.Option(64, "--samples", min=3, help="Samples compared (real ones from a run's data, else random)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="The larger batch latency is timed at (besides 1)."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Time PyTorch eager and onnxruntime, pruned and base."),
) -> None:
    """Export a pruned model to ONNX, TorchScript and torch.export; check each against PyTorch and
    time it. Exit 1 when an export's outputs differ beyond the tolerance."""
    from layerprune.app.export import export_path
    from layerprune.export import FORMATS, Tolerance

    result = export_path(source, format_ or list(FORMATS), out=out, tolerance=Tolerance(atol, rtol), count=samples,
                          batch_sizes=tuple(dict.fromkeys((1, batch_size))), latency=latency, log=log_line)
    if result.latency:
        table = Table(title=f"latency, ms (median of {result.latency[0]['repeats']} after {result.latency[0]['warmup']} "
                            f"warm-up passes, {result.latency[0]['threads']} threads, {result.latency[0]['device']})")
        for col in ("model", "runtime", "batch", "median ms", "min ms", "images/s"):
            table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
        for r in result.latency:
            table.add_row(r["model"], r["runtime"], str(r["batch_size"]), f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}",
                          f"{1000 * r['batch_size'] / r['median_ms']:,.0f}")
        console.print(table)
    console.print(f"outputs in {result.out}/ ({', '.join(Path(c.path).name for c in result.checks)}, export.json)")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
