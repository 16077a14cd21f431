"""The commands the Makefile gives users, read from it, so that what tests and benchmarks
run is what `make` runs."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def dvc_command(target: str = "demo") -> list[str]:
    """The ``dvc`` command of ``make <target>``'s recipe, run with this Python."""
    text = MAKEFILE.read_text()
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, f"no recipe for {target!r} in {MAKEFILE}"
    for line in recipe.group(1).splitlines():
        words = shlex.split(line)
        at = [i for i, w in enumerate(words) if w.endswith("/dvc")]
        if at:
            return [sys.executable, "-m", "dvc", *words[at[0] + 1 :]]
    raise AssertionError(f"make {target} runs no dvc command ({MAKEFILE})")
