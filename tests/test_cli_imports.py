"""The command line's cheap paths import neither torch, timm, Torch-Pruning nor igraph, and
``import layerprune`` still gives every public name (loaded on first use)."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import layerprune

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torch_pruning", "igraph")
COMMANDS = ("models", "datasets", "inspect", "criteria", "score", "validate", "run", "bench", "export")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def _cli(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, output and the heavy modules loaded by ``layerprune ARGS`` in a fresh process."""
    code = (f"import sys\nsys.argv = ['layerprune', *{list(args)!r}]\nfrom layerprune.cli import main\n"
            "try:\n    main()\n    rc = 0\nexcept SystemExit as exc:\n    rc = exc.code or 0\n"
            f"print('RC', rc, 'LOADED', *[m for m in {HEAVY!r} if m in sys.modules])")
    proc = _run(code)
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "RC", proc.stdout + proc.stderr
    return int(last[1]), proc.stdout + proc.stderr, last[3:]


@pytest.mark.parametrize("args", [
    ("--help",), *[(c, "--help") for c in COMMANDS], ("validate", "recipes/quickstart.yaml"), ("criteria",),
    ("datasets",), ("datasets", "cifar10"),
], ids=lambda a: " ".join(a))
def test_cheap_commands_import_no_heavy_library(args):
    rc, out, loaded = _cli(*args)
    assert rc == 0, out
    assert loaded == [], f"layerprune {' '.join(args)} imported {loaded}"


def test_validate_without_torch_still_checks_criterion_values_and_model_names():
    rc, out, loaded = _cli("validate", "recipes/quickstart.yaml", "--set", "criterion.params.k=0")
    assert rc == 2 and "criterion.params.k: must be an integer ≥ 1, got 0" in out and loaded == []
    rc, out, loaded = _cli("validate", "recipes/quickstart.yaml", "--set", "criterion.params.kk=3")
    assert rc == 2 and "criterion.params.kk" in out and loaded == []
    # a name that is not the project's own is looked up in timm (which is then imported)
    rc, out, _ = _cli("validate", "recipes/quickstart.yaml", "--set", "model.name=resnet_nope")
    assert rc == 2 and "model.name: unknown model 'resnet_nope'" in out


def test_import_layerprune_gives_every_public_name():
    proc = _run("import sys, layerprune\n"
                f"print('HEAVY', *[m for m in {HEAVY!r} if m in sys.modules])\n"
                "missing = [n for n in layerprune.__all__ if getattr(layerprune, n, None) is None]\n"
                "print('MISSING', *missing)")
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "HEAVY", f"import layerprune imported {lines[0]}"
    assert lines[-1] == "MISSING", proc.stdout + proc.stderr
    for name in ("find_blocks", "build_dataset", "Pruner", "Calibration", "Repair", "remove_blocks", "score_blocks"):
        assert callable(getattr(layerprune, name))
    assert layerprune.surgery.find_blocks is layerprune.find_blocks  # subpackages too
    assert layerprune.surgery.find.find_blocks is layerprune.find_blocks  # and their modules
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        layerprune.nope  # noqa: B018


@pytest.mark.parametrize("order", [
    "import layerprune\nimport timm",
    "import timm\nimport layerprune",
    "import layerprune.models\nimport timm",
    "import layerprune.cli\nimport timm",
])
def test_the_cifar_models_are_registered_whichever_is_imported_first(order):
    proc = _run(f"{order}\nprint(timm.is_model('cifar_resnet56'), timm.is_model('cifar_vgg19_bn'))")
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def test_the_cifar_model_names_known_without_timm_are_the_registered_ones():
    import timm

    from layerprune.models import CIFAR_MODELS

    assert sorted(CIFAR_MODELS) == sorted(timm.list_models("cifar_*"))


def test_dataset_options_read_from_source_match_the_builders():
    from layerprune.data import DATASETS, dataset_description, dataset_options
    from layerprune.lazy import source_signature
    from layerprune.registry import _import_target

    for name in DATASETS.names():
        target = DATASETS.target(name)
        builder = _import_target(target)
        params = {p.name: p.default for p in inspect.signature(builder).parameters.values()}
        read = source_signature(target)
        assert read is not None, f"{name}: its source could not be read"
        assert read[1] == params == dataset_options(name)
        assert dataset_description(name) == inspect.getdoc(builder).splitlines()[0]


def test_lazy_module_imports_on_first_attribute():
    from layerprune.lazy import lazy_import, source_signature

    proc = _run("import sys\nfrom layerprune.lazy import lazy_import\nm = lazy_import('fractions')\n"
                "print('fractions' in sys.modules, repr(m))\nm.Fraction\nprint('fractions' in sys.modules, repr(m))")
    assert proc.stdout.splitlines() == ["False <lazy module 'fractions'>", "True <lazy module 'fractions' (loaded)>"]
    assert lazy_import("math").sqrt(4.0) == 2.0
    assert source_signature("layerprune.nope:fn") is None
    assert source_signature("layerprune.lazy:lazy_import") == (inspect.getdoc(lazy_import),
                                                                {"name": inspect.Parameter.empty})
