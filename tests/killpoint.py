"""Run the ``layerprune`` command and SIGKILL it at a chosen point (for the kill tests).

    python tests/killpoint.py POINT layerprune-args...

POINT is one of
``done:STAGE``      right after a run marks STAGE finished (a stage boundary)
``in:STAGE@N``      at the N-th module forward call inside the run's STAGE
``trial:K@N``       at the N-th module forward call inside the bench's K-th trial (1-based)
``replace:NAME#M``  when an atomic write is about to move its complete temporary file or folder
                    onto a path called NAME, the M-th time (default 1): the write is half done

The process kills itself with SIGKILL, as ``kill -9`` would: no handler, no cleanup runs.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _count_forwards(limit: int):
    from torch.nn.modules.module import register_module_forward_pre_hook

    seen = [0]

    def hook(module, args):
        seen[0] += 1
        if seen[0] >= limit:
            die()

    return register_module_forward_pre_hook(hook)


def arm(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "done":
        from layerprune.recipe.rundir import RunDir

        mark_done = RunDir.mark_done

        def marked(self, stage):
            mark_done(self, stage)
            if stage == arg:
                die()

        RunDir.mark_done = marked
    elif kind == "in":
        from layerprune.recipe.runner import Runner

        stage, _, n = arg.partition("@")
        work = getattr(Runner, f"stage_{stage}")

        def inside(self):
            handle = _count_forwards(int(n))
            try:
                return work(self)
            finally:
                handle.remove()

        setattr(Runner, f"stage_{stage}", inside)
    elif kind == "trial":
        from layerprune.bench.harness import SettingBench

        k, _, n = arg.partition("@")
        started = [0]
        for name in ("depth_trial", "width_trial"):
            trial = getattr(SettingBench, name)

            def inside(self, *args, _trial=trial, **kwargs):
                started[0] += 1
                handle = _count_forwards(int(n)) if started[0] == int(k) else None
                try:
                    return _trial(self, *args, **kwargs)
                finally:
                    if handle is not None:
                        handle.remove()

            setattr(SettingBench, name, inside)
    elif kind == "replace":
        name, _, m = arg.partition("#")
        replace, seen = os.replace, [0]

        def replacing(src, dst, *args, **kwargs):
            if Path(dst).name == name:
                seen[0] += 1
                if seen[0] == int(m or 1):
                    die()
            return replace(src, dst, *args, **kwargs)

        os.replace = replacing
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from layerprune.cli import main

    sys.argv = ["layerprune", *sys.argv[2:]]
    main()
