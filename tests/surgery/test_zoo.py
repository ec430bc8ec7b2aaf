"""benchmarks/zoo.py, run as a script: block surgery across timm's zoo (one model per family)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import layerprune  # noqa: F401  (registers the CIFAR models)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "zoo.py"


def _run_zoo(out: Path, *args: str, timeout: float | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the script, writing ``out``; (the finished process, the records it wrote)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    records = json.loads(out.read_text())["records"] if out.exists() else []
    return proc, records


def test_named_models_are_checked_and_pass(tmp_path):
    proc, records = _run_zoo(tmp_path / "zoo.json", "--only", "cifar_resnet20", "resnet18", "--threads", "1",
                             timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [(r["family"], r["model"]) for r in records] == [("cifar_resnet", "cifar_resnet20"), ("resnet", "resnet18")]
    for r in records:
        assert r["status"] == "ok", r["error"]
        assert r["removable"] > 0
        # every block offered (removable, or collapsible when asked) is taken out alone
        assert r["single"]["ok"] == r["single"]["total"] == r["removable"] + r["collapsible"], r["single"]["failures"]
        assert r["every_other"]["ok"], r["every_other"]["error"]
        assert r["untouched"]["ok"], r["untouched"]
        assert r["granularity"]["complete"] and r["sublayer"]["offered"] == 0  # no branches inside their blocks


@pytest.mark.slow
def test_every_family_of_the_zoo_is_pruned_safely(tmp_path):
    families = {timm.models.model_entrypoint(n).__module__.rsplit(".", 1)[-1] for n in timm.list_models()}
    proc, records = _run_zoo(tmp_path / "zoo.json")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert {r["family"] for r in records} == families
    refused = {r["model"]: r["single"]["failures"] for r in records if r["single"] and r["single"]["failures"]}
    assert not refused
    modified = {r["model"]: r["untouched"] for r in records  # None: the model itself failed to build or run
                if r["untouched"] is not None and r["untouched"].get("ok") is not True}
    assert not modified
    broken = {r["model"]: r["error"] or r["every_other"]["error"] for r in records
              if r.get("removable") and not (r["every_other"] or {}).get("ok")}
    assert not broken
    # every family that names its blocks (timm's group_matcher, or stages.N.blocks.M) offers all of
    # them but one per stage, with no exemption: blocks that pass a tuple on, dense layers,
    # dual-path blocks and blocks that change shape without a shortcut (by collapse) included
    short = {r["model"]: r["granularity"]["short"] for r in records
             if r.get("granularity", {}).get("named") and not r["granularity"]["complete"]}
    assert not short
    # sub-layers: every other one removed at once runs, traces and exports
    sub_broken = {r["model"]: r["sublayer"] for r in records if r.get("sublayer") and r["sublayer"]["every_other"]
                  and not all((r["sublayer"][k] or {}).get("ok") for k in ("every_other", "jit_trace", "export"))}
    assert not sub_broken
