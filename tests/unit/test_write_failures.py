"""What a run writes: file modes under the umask, and write failures (a full disk, a
read-only mount, an existing folder, a path under a file, a killed writer) that end in one
line, keep the previous file and leave no temporary file behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_config

from skrd4ad.atomic import atomic_write_text, make_dir
from skrd4ad.checkpoint import save_checkpoint
from skrd4ad.errors import UserError
from skrd4ad.models import build_model
from skrd4ad.train import fit

REPO = Path(__file__).resolve().parents[2]
# A private mount namespace: the tmpfs exists for the one command and nobody else sees it.
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a private tmpfs mount needs root and unshare (CI runs as root)",
)


def in_private_tmpfs(options: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run python ``script`` with /mnt-like folder MOUNT (a tmpfs with ``options``) as cwd."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    shell = (
        f"mount -t tmpfs -o {options} tmpfs {mount} && cd {mount} && "
        f"{sys.executable} {tmp_path / 'script.py'}"
    )
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_files_and_folders_get_the_umask_modes(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        save_checkpoint(tmp_path / "c.pt", build_model("resnet18", "none"))
        folder = make_dir(tmp_path, "results-")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755


@needs_root
def test_a_full_disk_keeps_the_previous_file_and_no_temporary(tmp_path):
    done = in_private_tmpfs(
        "size=1m",
        """
        from pathlib import Path
        from skrd4ad.atomic import atomic_write_bytes
        from skrd4ad.errors import UserError
        atomic_write_bytes(Path("last.pt"), b"a" * 300_000)
        try:
            atomic_write_bytes(Path("last.pt"), b"b" * 900_000)
        except UserError as exc:
            print("ERROR", exc)
        print("KEPT", Path("last.pt").read_bytes() == b"a" * 300_000)
        print("FILES", sorted(p.name for p in Path(".").iterdir()))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("ERROR cannot write last.pt (No space left on device)")
    assert "previous last.pt is kept" in out[0]
    assert out[1:] == ["KEPT True", "FILES ['last.pt']"]


@pytest.fixture(scope="module")
def checkpoint(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    fit(tiny_config(small_dataset, out, epochs=1, val_fraction=0))
    return out / "model.pt"


def export_error(args: list[str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "skrd4ad.cli", "export", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    return line


def test_export_to_an_existing_folder_or_under_a_file(checkpoint, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    line = export_error(
        ["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", "folder"], tmp_path
    )
    assert "cannot write folder" in line and "directory" in line.lower()
    line = export_error(
        ["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", "a_file/m.pt"],
        tmp_path,
    )
    assert "cannot write a_file/m.pt" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder"]


@needs_root
def test_export_to_a_read_only_mount(checkpoint, tmp_path):
    done = in_private_tmpfs(
        "ro,size=1m",
        f"""
        import subprocess, sys
        done = subprocess.run([sys.executable, "-m", "skrd4ad.cli", "export", "--checkpoint",
                               "{checkpoint}", "--format", "torchscript", "--out", "m.pt"],
                              capture_output=True, text=True)
        print(done.returncode)
        print(done.stderr.strip())
        """,
        tmp_path,
    )
    code, *err = done.stdout.splitlines()
    assert code == "2" and len(err) == 1, done.stdout + done.stderr
    assert "cannot write m.pt (Read-only file system)" in err[0]


def test_a_killed_writer_leaves_no_temporary_after_resume(small_dataset, tmp_path):
    """SIGKILL in the middle of writing last.pt: the next run (a resume) removes the
    temporary file the killed one left, and the last good last.pt was never touched."""
    fit(tiny_config(small_dataset, tmp_path, epochs=1, val_fraction=0))
    good = (tmp_path / "last.pt").read_bytes()
    script = tmp_path / "slow_write.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from pathlib import Path
        from skrd4ad.atomic import atomic_write
        def writer(f):
            f.write(b"partial" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic_write(Path({str(tmp_path / "last.pt")!r}), writer)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt")]
    assert leftovers, "the killed writer left its temporary file"
    assert (tmp_path / "last.pt").read_bytes() == good
    fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0, resume=True))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_write_failure_during_training_is_one_error(small_dataset, tmp_path, monkeypatch):
    """ENOSPC while a checkpoint is written (simulated where no private mount is possible):
    a UserError naming the file; the previous last.pt stays whole."""
    import errno

    import skrd4ad.atomic

    fit(tiny_config(small_dataset, tmp_path, epochs=1, val_fraction=0))
    good = (tmp_path / "last.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(skrd4ad.atomic.os, "fsync", full)
    with pytest.raises(UserError, match=r"cannot write .*last.pt \(No space left on device\)"):
        fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0, resume=True))
    assert (tmp_path / "last.pt").read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
