"""skip_exit_gc: the freeze runs after the exit handlers registered later (MLflow's, say),
and before those registered earlier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import atexit, gc, sys
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: (out / "before.txt").write_text(str(gc.get_freeze_count())))
from skrd4ad.fast_exit import skip_exit_gc
skip_exit_gc()
skip_exit_gc()  # idempotent
atexit.register(lambda: (out / "after.txt").write_text(str(gc.get_freeze_count())))
"""


def test_freeze_runs_after_later_exit_handlers(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], check=True)
    # Registered after skip_exit_gc: runs first, sees nothing frozen yet.
    assert int((tmp_path / "after.txt").read_text()) == 0
    # Registered before it: runs last, after the freeze.
    assert int((tmp_path / "before.txt").read_text()) > 0
