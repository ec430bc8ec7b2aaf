"""How long the command line takes to answer, side by side with ``python -c "import torch"``.

Each command runs in a fresh process, in turns (one round runs every command once), and the
median over the rounds is reported with its ratio to importing torch. ``--baseline DIR`` also
runs the commands against another checkout of layerprune (``git worktree add DIR COMMIT``), with
the same interpreter, so the previous code is timed in the same run:

    python benchmarks/cli_startup.py --rounds 15
    git worktree add /tmp/lp-before 085b61c
    python benchmarks/cli_startup.py --rounds 15 --baseline /tmp/lp-before
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "layerprune --help": ["--help"],
    "layerprune inspect --help": ["inspect", "--help"],
    "layerprune validate recipes/quickstart.yaml": ["validate", "recipes/quickstart.yaml"],
    "layerprune criteria": ["criteria"],
    "layerprune datasets": ["datasets"],
}


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", type=Path, help="another layerprune checkout to time in the same run")
    args = parser.parse_args()

    cli = "from layerprune.cli import main; import sys; sys.argv[0] = 'layerprune'; main()"
    # each checkout runs in its own folder: `python -c` puts the working directory first on sys.path
    runs: dict[str, tuple[list[str], dict[str, str], Path]] = {
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], dict(os.environ), ROOT)}
    checkouts = {"": ROOT} | ({" (baseline)": args.baseline.resolve()} if args.baseline else {})
    for suffix, where in checkouts.items():
        env = {**os.environ, "PYTHONPATH": str(where)}
        for label, argv in COMMANDS.items():
            runs[label + suffix] = ([sys.executable, "-c", cli, *argv], env, where)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for label, (argv, env, cwd) in runs.items():  # warm the file cache once
        timed(argv, env, cwd)
    for _ in range(args.rounds):
        for label, (argv, env, cwd) in runs.items():
            times[label].append(timed(argv, env, cwd))
    torch_s = statistics.median(times["python -c 'import torch'"])
    print(f"{'command':55s} {'median s':>9s} {'× import torch':>15s}   ({args.rounds} rounds)")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:55s} {median:9.3f} {median / torch_s:15.2f}")


if __name__ == "__main__":
    main()
