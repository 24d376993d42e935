"""Platt scaling recovers known parameters; calibration metrics behave."""

from __future__ import annotations

import numpy as np
import pytest

from searchlite.calibration import brier, expected_calibration_error, fit_platt, sample_pairs


def test_platt_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-0.1, 0.5, 200_000)
    a, b = 25.0, -6.0
    labels = (rng.random(cos.size) < 1 / (1 + np.exp(-(a * cos + b)))).astype(float)
    fa, fb = fit_platt(cos, labels)
    assert fa == pytest.approx(a, rel=0.05)
    assert fb == pytest.approx(b, rel=0.05)


def test_calibration_metrics():
    labels = np.array([0, 0, 1, 1], dtype=float)
    perfect = labels.copy()
    assert expected_calibration_error(perfect, labels) == 0 and brier(perfect, labels) == 0
    assert brier(np.full(4, 0.5), labels) == pytest.approx(0.25)
    assert expected_calibration_error(np.full(4, 0.9), labels) == pytest.approx(0.4)


def test_sample_pairs_labels_positives_and_negatives():
    sims = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3]])
    cos, labels = sample_pairs(sims, [[0], [1, 2]], negatives=5)
    assert labels.sum() == 3
    assert set(cos[labels == 1]) == {0.9, 0.8, 0.3}
    assert set(cos[labels == 0]) <= {0.1, 0.2}  # q0 negatives: images 1, 2; q1 negatives: image 0


def test_calibrate_command_stores_parameters_used_by_search(tmp_path, hf_clip):
    import json

    from typer.testing import CliRunner

    from searchlite.cli.main import app
    from searchlite.sample_data import generate as sample_generate

    data = tmp_path / "set"
    sample_generate.generate(data, 30, 1, "test")
    spec = f"hf:{hf_clip}"
    runner = CliRunner()
    lib = tmp_path / "lib"
    assert runner.invoke(app, ["index", str(data), "-m", spec, "-L", str(lib)]).exit_code == 0
    out = runner.invoke(app, ["calibrate", str(data), "-m", spec, "-L", str(lib), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    for when in ("before", "after"):
        assert set(report[when]) >= {"ece", "brier"}
    assert report["after"]["brier"] <= report["before"]["brier"]
    results = json.loads(runner.invoke(app, ["search", "a red circle", "-L", str(lib), "--json", "-k", "5"]).stdout)
    for r in results:
        assert r["probability"] == pytest.approx(1 / (1 + np.exp(-(report["a"] * r["score"] + report["b"]))), abs=1e-9)
    status = json.loads(runner.invoke(app, ["status", "-L", str(lib), "--json"]).stdout)
    assert status["models"][0]["calibrated"] is True
