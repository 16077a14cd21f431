"""`python -m pipelines.model_file`: a category's model.pt from where the benchmark stored it
(the MLflow case is in test_pipeline, on a real benchmark's models)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.model_file import main

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_a_model_in_the_run_storage_is_copied_byte_for_byte(tmp_path):
    stored = tmp_path / "ray" / "brick-1" / "checkpoint_000002" / "model.pt"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"weights" * 1000)
    results = tmp_path / "results" / "brick"
    results.mkdir(parents=True)
    (results / "model.json").write_text(json.dumps({"model": str(stored)}))
    assert main([str(results), "--out", str(tmp_path / "m.pt"), "--params", str(PARAMS)]) == 0
    assert (tmp_path / "m.pt").read_bytes() == stored.read_bytes()


def test_no_pointer_or_a_gone_model_is_one_line_with_exit_2(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main([str(tmp_path), "--out", str(out), "--params", str(PARAMS)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.json names no model" in err
    (tmp_path / "model.json").write_text(json.dumps({"model": str(tmp_path / "gone.pt")}))
    assert main([str(tmp_path), "--out", str(out), "--params", str(PARAMS)]) == 2
    err = capsys.readouterr().err
    assert "not in the run storage" in err and not out.exists()
