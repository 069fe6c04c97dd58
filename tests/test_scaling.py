"""Scaling-law fit: recover known parameters from noisy synthetic runs; plan and CLI round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from megarec.scaling.fit import SMALL_GRID, fit_scaling_law
from megarec.scaling.law import ScalingLaw

from conftest import run_cli

TRUE = ScalingLaw(E=0.4232, A=502.32, alpha=0.3325, B=7.02, beta=0.1865)


def synthetic_runs(noise=0.002, seed=0):
    n, d = np.meshgrid(np.logspace(6, 10, 8), np.logspace(7, 12, 8))
    n, d = n.ravel(), d.ravel()
    loss = TRUE.loss(n, d) * np.exp(np.random.default_rng(seed).normal(0.0, noise, n.size))
    return n, d, loss


def test_recovers_known_parameters():
    n, d, loss = synthetic_runs()
    res = fit_scaling_law(n, d, loss, grid=SMALL_GRID)
    law = res.law
    assert law.alpha == pytest.approx(TRUE.alpha, rel=0.03)
    assert law.beta == pytest.approx(TRUE.beta, rel=0.05)
    assert law.E == pytest.approx(TRUE.E, rel=0.03)
    assert law.A == pytest.approx(TRUE.A, rel=0.15)
    assert law.B == pytest.approx(TRUE.B, rel=0.15)
    # derived allocation exponents: ≈ 0.36 / 0.64, consistent with alpha, beta
    assert law.a == pytest.approx(0.36, abs=0.01) and law.b == pytest.approx(0.64, abs=0.01)
    assert law.a + law.b == pytest.approx(1.0)
    assert law.a == pytest.approx(law.beta / (law.alpha + law.beta))
    assert res.rmse_log < 0.005


def test_optimal_allocation_is_the_minimum_on_the_iso_flop_line():
    c = 1e21
    plan = TRUE.optimal(c)
    assert 6 * plan["params"] * plan["tokens"] == pytest.approx(c, rel=1e-9)
    ns = plan["params"] * np.logspace(-1, 1, 201)
    losses = TRUE.loss(ns, c / (6 * ns))
    assert plan["loss"] <= losses.min() + 1e-12
    assert ns[np.argmin(losses)] == pytest.approx(plan["params"], rel=0.03)
    # N_opt scales as C^a
    ratio = TRUE.optimal(1e23)["params"] / plan["params"]
    assert math.log(ratio, 100) == pytest.approx(TRUE.a, rel=1e-9)


def test_cli_fit_and_plan(tmp_path):
    n, d, loss = synthetic_runs(seed=1)
    runs = tmp_path / "runs.csv"
    runs.write_text("params,tokens,loss\n" + "".join(f"{a:.6g},{b:.6g},{c:.8g}\n" for a, b, c in zip(n, d, loss)))
    out = tmp_path / "fit"
    r = run_cli(["scaling", "fit", "--runs", str(runs), "--out", str(out), "--grid", "small"])
    assert r.returncode == 0, r.stderr
    fit = json.loads((out / "fit.json").read_text())
    assert fit["alpha"] == pytest.approx(TRUE.alpha, rel=0.05) and fit["a"] == pytest.approx(0.36, abs=0.015)
    png = (out / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    r = run_cli(["scaling", "plan", "--flops", "1e21", "--flops", "1e23", "--fit", str(out / "fit.json"), "--json"])
    assert r.returncode == 0, r.stderr
    plans = json.loads(r.stdout)["plans"]
    assert [p["flops"] for p in plans] == [1e21, 1e23]
    assert plans[1]["params"] > plans[0]["params"]
    r = run_cli(["scaling", "plan", "--flops", "1e21"])
    assert r.returncode == 0 and "reference" in r.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("params,loss\n1,2\n")
    before = (out / "fit.json").read_bytes()
    r = run_cli(["scaling", "fit", "--runs", str(bad), "--out", str(out), "--force"])
    assert r.returncode == 2 and "tokens" in r.stderr and "Traceback" not in r.stderr
    assert (out / "fit.json").read_bytes() == before  # a failed --force run keeps the old fit
