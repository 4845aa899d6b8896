"""--prevalence: p(malignant) and the threshold read at a site's own share of malignant nodules, checked
against Bayes' rule in float64; decisions, made on the model's own p, must not move."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import Manifest
from edge_thyroid.cli import cli, main
from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path
from edge_thyroid.errors import BundleError, InputError
from edge_thyroid.metrics import shift_prior
from edge_thyroid.prevalence import Prevalence, model_prior, site_prevalence

from .conftest import edited_demo_copy, ultrasound_like
from .test_stream_records import STREAM_RECORDS, run_stream

DEMO = data_path(DEMO_BUNDLE)


def bayes(p: float, site: float, model: float) -> float:
    """Posterior odds = likelihood ratio x prior odds; the model's p at its prior gives the likelihood ratio."""
    ratio = (p / (1 - p)) / (model / (1 - model))
    odds = ratio * site / (1 - site)
    return odds / (1 + odds)


@pytest.mark.parametrize("site,model", [(0.1, 0.5), (0.85, 0.5), (0.3, 0.2), (0.5, 0.5)])
def test_the_move_is_bayes_rule(site, model):
    move = Prevalence(site, model)
    for p in (1e-6, 0.01, 0.2, 0.5, 0.593, 0.9, 1 - 1e-9):
        assert move.p(p) == pytest.approx(bayes(p, site, model), rel=1e-12, abs=1e-15)
        assert move.p(p) == pytest.approx(float(shift_prior(p, site, model)), rel=1e-9)
        assert Prevalence(model, site).p(move.p(p)) == pytest.approx(p, rel=1e-9)   # and back
    assert move.logit(0.25) == pytest.approx(0.25 + math.log(site / (1 - site)) - math.log(model / (1 - model)))
    assert move.p(None) is None and move.logit(None) is None
    assert (move.p(0.0), move.p(1.0)) == (0.0, 1.0)


def test_the_move_keeps_the_order_so_no_decision_changes():
    move = Prevalence(0.05, 0.5)
    p = np.random.default_rng(0).random(2000)
    shown = np.array([move.p(float(v)) for v in p])
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(shown, kind="stable"))
    for threshold in (0.3, 0.5931):
        assert np.array_equal(p >= threshold, shown >= move.p(threshold))


@pytest.mark.parametrize("site,model", [(0.0, 0.5), (1.0, 0.5), (-0.1, 0.5), (0.1, 1.5), (float("nan"), 0.5)])
def test_a_share_outside_0_1_is_one_line(site, model):
    with pytest.raises(InputError, match=r"expected the share of malignant nodules, in \(0, 1\)"):
        Prevalence(site, model)


def test_a_bundle_must_say_what_its_p_assumes():
    assert site_prevalence(None, {}, "b") is None
    assert site_prevalence(0.1, {"prior": 0.5}, "b") == Prevalence(0.1, 0.5)
    with pytest.raises(InputError, match="does not record which share of malignant nodules its p assumes"):
        site_prevalence(0.1, {}, "b")
    assert model_prior({"prior": True}) is None and model_prior(None) is None and model_prior({"prior": 0.3}) == 0.3


def test_the_manifest_entry_is_checked_and_kept():
    manifest = json.loads((DEMO / "manifest.json").read_text())
    assert manifest["probability"]["prior"] == 0.5
    assert Manifest.from_dict(manifest).to_dict()["probability"] == manifest["probability"]
    for bad in (1.0, 0, "0.5", None):
        with pytest.raises(BundleError, match=r"probability.prior is .*; expected the share"):
            Manifest.from_dict({**manifest, "probability": {"prior": bad}})
    assert "probability" not in Manifest.from_dict({k: v for k, v in manifest.items() if k != "probability"}).to_dict()


def stream_frames(tmp_path, name, *extra):
    out = tmp_path / f"{name}.jsonl"
    code = run_stream(str(DEMO), "--source", "synthetic:dual?size=480x270&frames=24", "--as-fast-as-possible", "--quiet",
                      "--json-out", str(out), "--tau", "0.25", "--whole-pane", *extra)
    assert code == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_a_stream_at_a_site_prevalence_shows_moved_p_and_the_same_decisions(tmp_path):
    own, site = stream_frames(tmp_path, "own"), stream_frames(tmp_path, "site", "--prevalence", "0.1")
    for record in own + site:
        STREAM_RECORDS.validate(record)
    assert own[0]["probability"] is None and site[0]["probability"] == {"prevalence": 0.1, "model_prior": 0.5}
    move = Prevalence(0.1, 0.5)
    assert site[0]["threshold"] == pytest.approx(move.p(own[0]["threshold"]), rel=1e-12)
    frames = [(a, b) for a, b in zip(own, site) if a["type"] == "frame"]
    assert len(frames) == 24 and any(a["p"] is not None for a, _ in frames)
    for a, b in frames:
        assert b["decision"] == a["decision"] and b["reason"] == a["reason"]
        for key in ("p", "p_smoothed"):
            assert (b[key] is None) == (a[key] is None)
            if a[key] is not None:   # records keep 6 decimals
                assert b[key] == pytest.approx(move.p(a[key]), abs=2e-6)
        assert b["threshold"] == pytest.approx(move.p(a["threshold"]), rel=1e-12)
        pane_a, pane_b = a["panes"][0], b["panes"][0]
        if pane_a.get("p") is not None:
            assert pane_b["p"] == pytest.approx(move.p(pane_a["p"]), abs=2e-6)
            assert pane_b["logit"] == pane_a["logit"]   # a pane's contribution to the logit is not a probability


def test_classify_at_a_site_prevalence(tmp_path):
    import cv2

    image = tmp_path / "nodule.png"
    cv2.imwrite(str(image), np.dstack([ultrasound_like(160, 200, seed=s) for s in (1, 2, 3)]))
    runner = CliRunner()
    own = runner.invoke(cli, ["classify", str(DEMO), str(image), "--json"])
    site = runner.invoke(cli, ["classify", str(DEMO), str(image), "--json", "--prevalence", "0.2"])
    assert own.exit_code == 0 and site.exit_code == 0, own.output + site.output
    a, b = json.loads(own.stdout.strip().splitlines()[-1]), json.loads(site.stdout.strip().splitlines()[-1])
    move = Prevalence(0.2, 0.5)
    assert b["p_malignant"] == pytest.approx(move.p(a["p_malignant"]), rel=1e-9)
    assert b["threshold"] == pytest.approx(move.p(a["threshold"]), rel=1e-12)
    assert b["decision"] == a["decision"] and b["probability"] == {"prevalence": 0.2, "model_prior": 0.5}
    text = runner.invoke(cli, ["classify", str(DEMO), str(image), "--prevalence", "0.2"])
    assert text.exit_code == 0 and "at prevalence 0.2;" in text.stdout


def test_a_bundle_that_does_not_say_is_refused_in_one_line(tmp_path, capsys):
    bundle = edited_demo_copy(tmp_path / "bundle", lambda manifest: manifest.pop("probability"))
    for command in (["classify", str(bundle), str(tmp_path / "x.png")], ["stream", str(bundle), "--source", "synthetic"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--prevalence", "0.1"])
        error = capsys.readouterr().err
        assert stop.value.code == 2 and "Traceback" not in error
        assert [line for line in error.splitlines() if line.startswith("error:")] == [
            f"error: --prevalence 0.1: bundle {bundle} does not record which share of malignant nodules its p assumes "
            "(manifest probability.prior); expected a bundle exported with --probability-prior (0.5 for a model "
            "trained on equally sampled classes)"]
    with pytest.raises(SystemExit) as stop:
        main(["classify", str(DEMO), str(tmp_path / "x.png"), "--prevalence", "1"])
    assert stop.value.code == 2 and "--prevalence" in capsys.readouterr().err
