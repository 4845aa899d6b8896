"""edge-thyroid info --card: the model card built from a verified manifest (edge_thyroid/model_card.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_thyroid.bundle import load_bundle
from edge_thyroid.cli import main
from edge_thyroid.model_card import NOT_RECORDED, render_model_card

from .conftest import needs_torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "edge_thyroid" / "data" / "demo_bundle"


def _manifest(**metrics) -> dict:
    """A minimal project manifest: B-mode trained, SMI accepted, the given cross-validation figures."""
    cv = {"folds": 4, "seeds": [0], "data": "pack.npz", **metrics}
    return {"backbone": "resnet50", "modalities": ["bmode", "smi"], "trained_modalities": ["bmode"],
            "preprocessing": {"image_size": 128}, "models": {"fp32": {"file": "model.onnx"}},
            "threshold": {"value": 0.5, "method": "youden", "chosen_on": "training folds"},
            "metrics": {"label_source": "TI-RADS category, not pathology", "cross_validation": cv}}


def test_the_committed_demo_card_is_the_demo_bundles_own(monkeypatch, capsys):
    # docs/model_card.md is generated; a re-exported or re-signed demo bundle must regenerate it:
    #   edge-thyroid info edge_thyroid/data/demo_bundle --card > docs/model_card.md
    monkeypatch.delenv("EDGE_THYROID_TRUSTED_KEYS", raising=False)
    main(["info", str(DEMO), "--card"])
    card = capsys.readouterr().out
    assert card == (ROOT / "docs" / "model_card.md").read_text(), \
        "docs/model_card.md is stale: edge-thyroid info edge_thyroid/data/demo_bundle --card > docs/model_card.md"
    loaded = load_bundle(DEMO)
    assert loaded.signature.manifest_sha256 in card   # the card names the manifest it was built from
    auc = loaded.manifest.metrics["cross_validation"]["auc"]
    assert f"{auc['mean']:.3f} ± {auc['sd']:.3f}" in card


def test_figures_are_the_manifests_and_limits_follow_from_them():
    card = render_model_card(_manifest(auc={"mean": 0.7, "sd": 0.06}, auc_per_fold=[0.65, 0.75],
                                       specificity={"mean": 0.49, "sd": 0.09}, sensitivity={"mean": 0.76, "sd": 0.05},
                                       tirads2_benign_rate={"mean": 0.5, "sd": 0.1},
                                       auc_train_side={"mean": 0.95, "sd": 0.01},
                                       out_of_fold_auc=0.711, out_of_fold_auc_ci95=[0.638, 0.783]))
    assert "| AUC, mean ± sd over folds | 0.700 ± 0.060 (folds 0.650, 0.750) |" in card
    assert "0.711 [0.638, 0.783]" in card
    assert "| Sensitivity / specificity at each fold's training-side threshold | 0.76 ± 0.05 / 0.49 ± 0.09 |" in card
    limits = card.split("## Limits")[1]
    assert "about 51% of benign-labelled nodules are called malignant" in limits
    assert "called benign 50% of the time" in limits
    assert "AUC 0.95 against 0.70" in limits
    assert "not pathology" in limits and "another hospital" in limits
    assert "Inputs for smi are accepted" in limits   # accepted but untrained


def test_good_figures_raise_no_limit_of_their_own():
    card = render_model_card(_manifest(auc={"mean": 0.9, "sd": 0.02}, specificity={"mean": 0.85},
                                       tirads2_benign_rate={"mean": 0.95}, auc_train_side={"mean": 0.93}))
    limits = card.split("## Limits")[1]
    assert "Specificity" not in limits and "TI-RADS 2" not in limits and "fits its training crops" not in limits
    assert "0.900 ± 0.020" in card


def test_a_bare_manifest_says_what_is_not_recorded_instead_of_guessing():
    card = render_model_card({"backbone": "vgg16", "modalities": ["bmode"], "trained_modalities": ["bmode"],
                              "models": {"fp32": {}}, "threshold": {}, "metrics": {},
                              "model_card": {"intended_use": "research only"}})
    assert "Cross-validated figures: not recorded" in card
    assert f"**Threshold:** {NOT_RECORDED}." in card and f"**Labels:** {NOT_RECORDED}." in card
    assert "research only" in card
    assert "What the labels mean is not recorded" in card
    assert "| figure |" not in card and "Compiled and quantized" not in card


def test_odd_values_in_a_hand_edited_manifest_are_left_out_not_a_crash():
    card = render_model_card(_manifest(auc={"mean": "high"}, out_of_fold_auc=0.7, out_of_fold_auc_ci95=["a", None],
                                       specificity=True, auc_per_fold=[0.6, "x"]))
    assert "| AUC, every held-out crop pooled [95% DeLong CI] | 0.700 |" in card
    assert "AUC, mean" not in card and "Specificity" not in card


def test_quantized_gates_report_agreement_not_auc():
    manifest = _manifest(auc={"mean": 0.7, "sd": 0.06})
    manifest["models"] = {"int8": {"gates": {"onnxruntime": {"passed": True, "agreement": 0.989, "n": 91, "auc": 0.96},
                                             "openvino/bf16": {"passed": False, "agreement": 0.95, "n": 91}}}}
    card = render_model_card(manifest)
    assert "- int8 on onnxruntime: passed, 0.989 of 91 decisions" in card
    assert "- int8 on openvino/bf16: FAILED, 0.950 of 91 decisions" in card
    assert "0.96" not in card   # the gate's AUC is on training crops: never shown as accuracy


def test_card_and_json_together_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["info", str(DEMO), "--card", "--json"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--json and --card" in err


@needs_torch
def test_an_edge_thyroid_checkpoint_can_say_what_it_is_for(tmp_path, capsys):
    import torch

    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(0)
    checkpoint = tmp_path / "final.pt"
    save_checkpoint(checkpoint, MultimodalClassifier("googlenet", ("bmode",)).eval(),
                    CheckpointInfo("googlenet", ("bmode",), image_size=32))
    bundle = tmp_path / "bundle"
    main(["export", str(checkpoint), "-o", str(bundle), "--intended-use", "research on B-mode crops only"])
    assert json.loads((bundle / "manifest.json").read_text())["model_card"] == {"intended_use": "research on B-mode crops only"}
    capsys.readouterr()
    main(["info", str(bundle)])
    assert "intended use research on B-mode crops only" in capsys.readouterr().out
    main(["info", str(bundle), "--card"])
    assert "- **Intended use:** research on B-mode crops only." in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:   # what an imported model needs stays refused for a checkpoint
        main(["export", str(checkpoint), "-o", str(tmp_path / "b2"), "--mean", "0.5,0.5,0.5"])
    assert exited.value.code == 2
    assert "apply to your own model" in capsys.readouterr().err and not (tmp_path / "b2").exists()
