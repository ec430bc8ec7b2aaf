"""The ``layerprune`` command: a thin typer layer over the library API (no logic of its own).

Exit codes: 0 success, 2 bad input (unknown name, bad option, missing file), 1 anything else.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from layerprune.errors import LayerpruneError

app = typer.Typer(
    name="layerprune",
    help="Prune whole layers out of deep networks, chosen by interchangeable criteria.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`LayerpruneError` into one red line on stderr and its exit code (2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LayerpruneError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _version_callback(value: bool) -> None:
    if value:
        from layerprune import __version__

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
    from layerprune.data import DATASETS, dataset_options

    if name is None:
        table = Table(title="datasets")
        table.add_column("name")
        table.add_column("description")
        for ds in DATASETS.names():
            doc = (DATASETS.get(ds).__doc__ or "").strip().splitlines()
            table.add_row(ds, doc[0] if doc else "")
        console.print(table)
        return
    options = dataset_options(name)
    table = Table(title=f"dataset {DATASETS.canonical(name)!r} options")
    table.add_column("option")
    table.add_column("default")
    for key, default in options.items():
        table.add_row(key, repr(default))
    console.print(table)


def _parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``["shortcut=B", "num_classes=100"]`` → typed kwargs (values parsed as YAML scalars)."""
    import yaml

    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LayerpruneError(f"--model-arg {pair!r}: expected KEY=VALUE")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


@app.command("inspect")
@user_errors
def inspect_cmd(
    model_name: str = typer.Argument(..., metavar="MODEL", help="timm model name, e.g. cifar_resnet56."),
    input_size: Optional[tuple[int, int, int]] = typer.Option(
        None, "--input-size", metavar="C H W", help="Input size (default: the model's pretrained_cfg)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Load these weights first."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", metavar="KEY=VALUE",
                                        help="Model keyword argument, repeatable (e.g. -a shortcut=B)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the blocks of MODEL: which can be removed, why or why not, and what each costs."""
    import json

    import torch

    from layerprune.models import create_model
    from layerprune.surgery import find_blocks, model_cost
    from layerprune.surgery.blocks import default_input

    model = create_model(model_name, checkpoint=checkpoint, **_parse_model_args(model_arg)).eval()
    x = torch.randn(1, *input_size) if input_size else default_input(model)
    blocks = find_blocks(model, x)
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
