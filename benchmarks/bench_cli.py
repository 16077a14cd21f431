"""How fast the ``skrd4ad`` command answers when it does no work: ``--help``, a command's
``--help`` and an argument error, each in a fresh process (the console script of this
environment), median of ``--rounds``.

    python benchmarks/bench_cli.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

SKRD4AD = str(Path(sys.executable).parent / "skrd4ad")
CASES = {
    "skrd4ad --help": [SKRD4AD, "--help"],
    "skrd4ad train --help": [SKRD4AD, "train", "--help"],
    "skrd4ad train --epochs x (error)": [SKRD4AD, "train", "--epochs", "x"],
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):  # alternated, so that each case sees the same load
        for name, cmd in CASES.items():
            times[name].append(wall(cmd))
    figures = {n: {"median_s": statistics.median(t), "max_s": max(t)} for n, t in times.items()}
    write_result("cli", figures)


if __name__ == "__main__":
    main()
