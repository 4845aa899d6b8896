"""The familiarity check: k-nearest-neighbour cosine distances against a float64 brute force, the
leave-case-out threshold, the bundle entry (written, hashed, validated, refused when wrong) and the
field every result carries (classify, stream records), on a copy of the shipped demo bundle."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import MANIFEST, load_bundle
from edge_thyroid.cli import cli, main
from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path
from edge_thyroid.engine import Engine
from edge_thyroid.errors import BundleError, InputError
from edge_thyroid.familiarity import (Familiarity, FamiliarityReference, leave_group_out_distance,
                                      neighbour_distance, normalise)
from edge_thyroid.frames import Pane

from .conftest import ultrasound_like
from .test_stream_records import STREAM_RECORDS, run_stream


def brute_force(queries: np.ndarray, bank: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """1 - the k-th largest cosine similarity, by sorting every pair in float64."""
    out = []
    for i, q in enumerate(queries):
        sims = [float(q @ b / (np.linalg.norm(q) * np.linalg.norm(b))) for j, b in enumerate(bank)
                if exclude is None or not exclude(i, j)]
        out.append(1.0 - sorted(sims, reverse=True)[k - 1])
    return np.array(out)


def test_normalise_gives_unit_rows_and_keeps_a_zero_row_zero():
    rows = normalise(np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-15)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_neighbour_distance_matches_a_float64_brute_force(k):
    rng = np.random.default_rng(k)
    bank, queries = rng.random((20, 16)), rng.normal(size=(6, 16))
    np.testing.assert_allclose(neighbour_distance(queries, bank, k), brute_force(queries, bank, k), atol=1e-12)


def test_neighbour_distance_refuses_a_k_the_bank_cannot_give():
    with pytest.raises(InputError, match="neighbours is 4; expected 1..3"):
        neighbour_distance(np.ones((1, 2)), np.ones((3, 2)), 4)


def test_leave_group_out_ignores_every_row_of_the_same_case():
    rng = np.random.default_rng(0)
    features = rng.random((15, 8))
    groups = [str(i // 3) for i in range(15)]       # five cases of three crops
    expected = brute_force(features, features, 2, exclude=lambda i, j: groups[i] == groups[j])
    np.testing.assert_allclose(leave_group_out_distance(features, groups, 2), expected, atol=1e-12)
    # a crop's own copy in its case does not make it look familiar
    duplicated = np.vstack([features, features[:1]])
    assert leave_group_out_distance(duplicated, [*groups, "0"], 1)[0] > 1e-6


def test_leave_group_out_in_blocks_gives_what_one_block_gives(monkeypatch):
    import edge_thyroid.familiarity as familiarity

    rng = np.random.default_rng(5)
    features, groups = rng.random((23, 6)), [str(i // 4) for i in range(23)]
    whole = leave_group_out_distance(features, groups, 3)
    monkeypatch.setattr(familiarity, "ROWS_PER_BLOCK", 5)
    np.testing.assert_allclose(leave_group_out_distance(features, groups, 3), whole, rtol=0, atol=1e-12)


def test_leave_group_out_says_what_was_wrong():
    with pytest.raises(InputError, match="2 groups for 3 feature rows"):
        leave_group_out_distance(np.ones((3, 2)), ["a", "b"], 1)
    with pytest.raises(InputError, match=r"neighbours is 2; expected 1..1 \(rows outside the largest group\)"):
        leave_group_out_distance(np.eye(3), ["a", "a", "b"], 2)


def test_the_threshold_is_the_quantile_of_the_leave_case_out_distances_and_check_matches_float64():
    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(40, 32)))
    groups = [str(i // 2) for i in range(40)]
    reference = FamiliarityReference.build("bmode", features, groups, neighbours=3, quantile=0.9)
    expected = np.quantile(brute_force(features, features, 3, exclude=lambda i, j: groups[i] == groups[j]), 0.9)
    assert reference.threshold == pytest.approx(expected, abs=1e-12)
    queries = np.abs(rng.normal(size=(5, 32)))
    for query, distance in zip(queries, brute_force(queries, features, 3)):
        # the bank is kept in float16: distances agree to its precision
        assert reference.check(query).distance == pytest.approx(distance, abs=2e-3)
    with pytest.raises(InputError, match="bmode features have 31 channels; the familiarity reference has 32"):
        reference.check(queries[0, :31])


def test_a_pane_identical_to_a_training_crop_is_at_distance_zero_not_below():
    rng = np.random.default_rng(4)
    features = np.abs(rng.normal(size=(12, 64)))
    reference = FamiliarityReference.build("bmode", features, [str(i // 2) for i in range(12)], neighbours=1)
    distances = [reference.check(row).distance for row in features]
    assert all(0.0 <= d <= 2e-3 for d in distances)


def test_familiar_up_to_and_including_the_threshold():
    assert Familiarity(0.25, 0.25).familiar and not Familiarity(0.2501, 0.25).familiar
    assert Familiarity(0.3, 0.25).to_dict() == {"distance": 0.3, "threshold": 0.25, "familiar": False}


def test_a_reference_refuses_a_bank_too_small_or_not_finite():
    with pytest.raises(BundleError, match=r"shape \(2, 4\) for k=3"):
        FamiliarityReference("bmode", np.ones((2, 4)), 3, 0.1)
    with pytest.raises(BundleError, match="non-finite"):
        FamiliarityReference("bmode", np.full((4, 4), np.nan), 1, 0.1)


# --- a bundle with a reference: the demo bundle's model on a few synthetic cases -------------------------


@pytest.fixture(scope="module")
def training_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("familiar-data")
    rows = []
    for i in range(10):
        image = np.repeat(ultrasound_like(160, 160, seed=i)[:, :, None], 3, axis=2)
        cv2.imwrite(str(folder / f"{i}.png"), image)
        rows.append({"image": f"{i}.png", "label": ["benign", "malignant", ""][i % 3], "case_id": str(i // 2)})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "case_id"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def familiar_bundle(tmp_path_factory, training_csv):
    bundle = tmp_path_factory.mktemp("familiar") / "bundle"
    shutil.copytree(data_path(DEMO_BUNDLE), bundle)
    result = CliRunner().invoke(cli, ["familiarize", str(bundle), "--data", str(training_csv), "--neighbours", "2",
                                       "--threads", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    assert recorded["signature_removed"] is True   # the demo bundle is signed; its signature covered the old manifest
    return bundle


def features_of(bundle, paths) -> np.ndarray:
    with Engine(bundle, threads=1) as engine:
        rows = []
        for path in paths:
            frame = cv2.imread(str(path))
            rows.append(engine.classify(frame, [Pane("bmode", (0, 0, frame.shape[1], frame.shape[0]))]).panes[0].pooled)
    return np.array(rows, dtype=np.float64)


def test_familiarize_records_the_reference_in_the_manifest_with_its_hash(familiar_bundle, training_csv):
    bundle = load_bundle(familiar_bundle)
    entry = bundle.manifest.familiarity
    assert entry["file"] == "familiarity.npz" and entry["file"] in bundle.manifest.files
    assert (entry["modality"], entry["neighbours"], entry["crops"], entry["cases"]) == ("bmode", 2, 10, 5)
    assert not (familiar_bundle / "manifest.sig").exists()
    # the threshold is what the reference built from the same features (computed here separately) gives
    images = [training_csv.parent / f"{i}.png" for i in range(10)]
    expected = FamiliarityReference.build("bmode", features_of(familiar_bundle, images),
                                          [str(i // 2) for i in range(10)], neighbours=2)
    assert entry["threshold"] == pytest.approx(expected.threshold, abs=1e-9)


def test_classify_reports_the_distance_the_reference_gives(familiar_bundle, training_csv, tmp_path):
    image = tmp_path / "inverted.png"
    cv2.imwrite(str(image), 255 - cv2.imread(str(training_csv.parent / "0.png")))
    result = CliRunner().invoke(cli, ["classify", str(familiar_bundle), str(training_csv.parent / "0.png"), str(image),
                                       "--json", "--backend", "onnxruntime"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    entry = load_bundle(familiar_bundle).manifest.familiarity
    bank = features_of(familiar_bundle, [training_csv.parent / f"{i}.png" for i in range(10)])
    queries = features_of(familiar_bundle, [training_csv.parent / "0.png", image])
    for record, distance in zip(records, brute_force(queries, bank, 2)):
        assert record["familiarity"]["distance"] == pytest.approx(distance, abs=2e-3)
        assert record["familiarity"]["familiar"] == (record["familiarity"]["distance"] <= entry["threshold"])
    # a training image is at distance ~0 from itself, so its second neighbour is its case's other crop
    assert records[0]["familiarity"]["familiar"]


def test_stream_records_carry_the_familiarity_and_follow_the_schema(familiar_bundle, tmp_path):
    out = tmp_path / "s.jsonl"
    code = run_stream(str(familiar_bundle), "--source", "synthetic:single?size=480x270&frames=4", "--as-fast-as-possible",
                      "--quiet", "--json-out", str(out), "--whole-pane", "--backend", "onnxruntime")
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    STREAM_RECORDS.validate(records[0])
    assert records[0]["model"]["familiarity"]["neighbours"] == 2 and records[0]["model"]["familiarity"]["crops"] == 10
    frames = [r for r in records if r["type"] == "frame"]
    assert frames and all(r["familiarity"] is not None for r in frames)
    for record in frames:
        STREAM_RECORDS.validate(record)
        assert record["familiarity"]["familiar"] == (record["familiarity"]["distance"] <= record["familiarity"]["threshold"])


@pytest.mark.parametrize("threshold, abstains", [(0.0, True), (2.0, False)])
def test_abstain_unfamiliar_withholds_the_decision_but_keeps_p(familiar_bundle, tmp_path, threshold, abstains):
    copy = edited(familiar_bundle, tmp_path, lambda m, _: m["familiarity"].update(threshold=threshold))
    out = tmp_path / "s.jsonl"
    code = run_stream(str(copy), "--source", "synthetic:single?size=480x270&frames=4", "--as-fast-as-possible",
                      "--quiet", "--json-out", str(out), "--whole-pane", "--backend", "onnxruntime",
                      "--abstain-unfamiliar")
    assert code == 0
    frames = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "frame"]
    assert frames and all(r["p"] is not None for r in frames)
    for record in frames:
        STREAM_RECORDS.validate(record)
        assert (record["reason"] == "unfamiliar") == abstains
        assert (record["decision"] == "abstain") == abstains
        if abstains:
            assert "unlike the model's training crops" in record["detail"]


def test_abstain_unfamiliar_needs_a_reference(capsys):
    code = run_stream(str(data_path(DEMO_BUNDLE)), "--source", "synthetic:single?size=480x270&frames=2",
                      "--quiet", "--abstain-unfamiliar")
    error = capsys.readouterr().err
    assert code == 2 and "--abstain-unfamiliar needs a bundle with a familiarity reference" in error
    assert "Traceback" not in error


def test_a_bundle_without_a_reference_reports_none(tmp_path):
    with Engine(data_path(DEMO_BUNDLE), threads=1) as engine:
        prediction = engine.classify(np.full((100, 100, 3), 90, np.uint8), [Pane("bmode", (0, 0, 100, 100))])
    assert engine.familiarity is None and prediction.familiarity is None
    assert "familiarity" not in prediction.to_dict()


def edited(familiar_bundle, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(familiar_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(manifest, copy)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda m, _: m["familiarity"].update(neighbours=0), "familiarity.neighbours is 0; expected an integer >= 1"),
    (lambda m, _: m["familiarity"].update(threshold=3.0), "familiarity.threshold is 3.0; expected a cosine distance"),
    (lambda m, _: m["familiarity"].update(modality="ct"), "familiarity.modality is 'ct'; expected one of"),
    (lambda m, _: m["familiarity"].update(file="../x.npz"), "escapes the bundle directory"),
    (lambda m, _: m["files"].pop("familiarity.npz"), r"\['familiarity.npz'\] are used but have no sha256"),
])
def test_a_wrong_familiarity_entry_is_refused_naming_the_field(familiar_bundle, tmp_path, edit, message):
    with pytest.raises(BundleError, match=message):
        load_bundle(edited(familiar_bundle, tmp_path, edit))


def test_a_modified_reference_file_or_one_of_another_width_is_refused(familiar_bundle, tmp_path):
    def swap_bank(manifest, copy):
        from edge_thyroid.bundle import sha256_file

        np.savez(copy / "familiarity.npz", bank=np.ones((4, 7), np.float16))
        manifest["files"]["familiarity.npz"] = sha256_file(copy / "familiarity.npz")

    with pytest.raises(BundleError, match="holds 7-channel features; the model's bmode features have 2048"):
        Engine(edited(familiar_bundle, tmp_path, swap_bank), threads=1)
    tampered = tmp_path / "tampered"
    shutil.copytree(familiar_bundle, tampered)
    np.savez(tampered / "familiarity.npz", bank=np.ones((4, 2048), np.float16))
    with pytest.raises(BundleError, match="'familiarity.npz' has sha256 .* the file was modified"):
        load_bundle(tampered)


def test_familiarize_says_what_was_wrong(tmp_path, training_csv, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(data_path(DEMO_BUNDLE), bundle)
    lonely = tmp_path / "one_case.csv"
    lonely.write_text("image,label,case_id\n" + f"{training_csv.parent / '0.png'},benign,1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["familiarize", str(bundle), "--data", str(lonely)])
    error = capsys.readouterr().err
    assert exit_info.value.code != 0 and "of 1 case; the threshold leaves each case out" in error
    assert "Traceback" not in error
    assert (bundle / "manifest.sig").exists() and not (bundle / "familiarity.npz").exists()   # nothing changed


# --- the benchmark's changed copies (benchmarks/familiarity_check.py) -----------------------------------


def test_the_benchmarks_changed_copies_are_what_they_say():
    from benchmarks import familiarity_check as bench

    image = np.repeat(ultrasound_like(60, 80, seed=3)[:, :, None], 3, axis=2)
    copies = bench.variants(image, np.random.default_rng(0))
    assert set(bench.LABELLED_KINDS) <= set(copies)
    expected = np.round(255.0 * (image / 255.0) ** 1.6).astype(np.uint8)       # float64 reference
    np.testing.assert_array_equal(copies["gamma 1.6"], expected)
    zoomed = copies["zoomed out 3x"]
    assert zoomed.shape == (180, 240, 3)
    np.testing.assert_array_equal(zoomed[60:120, 80:160], image)                  # the crop, a third of the pane
    np.testing.assert_array_equal(copies["upside down"], image[::-1])
    np.testing.assert_array_equal(copies["inverted"], 255 - image)
    assert np.unique(copies["blank"]).size == 1
    noise = copies["speckle noise"]
    assert abs(float(noise.mean()) - float(image.mean())) < 3 and noise.std() > 10   # grain of the crop's level
    assert np.array_equal(noise[..., 0], noise[..., 2])


def test_evaluate_counts_the_unfamiliar_rows_and_scores_the_others(familiar_bundle, training_csv, tmp_path, capsys):
    from edge_thyroid.metrics import roc_auc

    folder = training_csv.parent
    rows = [(f"{i}.png", ["benign", "malignant"][i % 3], str(i // 2)) for i in range(10) if i % 3 != 2]
    for i in (0, 1):   # inverted copies, new cases: the kind of row the reference exists to notice
        cv2.imwrite(str(tmp_path / f"inv{i}.png"), 255 - cv2.imread(str(folder / f"{i}.png")))
        rows.append((str(tmp_path / f"inv{i}.png"), ["benign", "malignant"][i], f"x{i}"))
    data = tmp_path / "eval.csv"
    data.write_text("image,label,case_id\n" + "".join(f"{folder / image if not image.startswith('/') else image},"
                                                      f"{label},{case}\n" for image, label, case in rows))
    scores = tmp_path / "scores.csv"
    main_code = 0
    try:
        main(["evaluate", str(familiar_bundle), "--data", str(data), "--split", "all", "--json", "--scores",
              str(scores), "--resamples", "50", "--backend", "onnxruntime"])
    except SystemExit as exc:
        main_code = exc.code or 0
    assert main_code == 0
    report = json.loads(capsys.readouterr().out)
    table = list(csv.DictReader(open(scores)))
    familiar = np.array([row["familiar"] == "True" for row in table])
    # the count and the AUC follow from the per-row flags the scores CSV carries
    entry = load_bundle(familiar_bundle).manifest.familiarity
    assert all((float(r["distance"]) <= entry["threshold"]) == f for r, f in zip(table, familiar))
    assert report["familiarity"]["unfamiliar"] == int((~familiar).sum()) and report["familiarity"]["rows"] == 9
    labels = np.array([int(r["label"]) for r in table])
    p = np.array([float(r["score"]) for r in table])
    if len(set(labels[familiar])) == 2:
        assert report["familiarity"]["auc_familiar"] == pytest.approx(roc_auc(labels[familiar], p[familiar]), abs=1e-12)
    # the distances are the reference's (float64 brute force over the bank's features)
    bank = features_of(familiar_bundle, [folder / f"{i}.png" for i in range(10)])
    queries = features_of(familiar_bundle, [folder / image if not image.startswith("/") else image
                                             for image, _, _ in rows])
    np.testing.assert_allclose([float(r["distance"]) for r in table], brute_force(queries, bank, 2), atol=2e-3)


def test_the_summary_counts_only_the_rows_that_were_checked(tmp_path):
    from edge_thyroid.dataset import Sample
    from edge_thyroid.evaluation import Scored
    from edge_thyroid.metrics import roc_auc

    labels = [0, 1, 0, 1, 1, 0]
    samples = [Sample(tmp_path / f"{i}.png", label, str(i)) for i, label in enumerate(labels)]
    scores = np.array([0.2, 0.9, 0.4, 0.3, 0.8, 0.6])
    checks = [Familiarity(0.01, 0.05), Familiarity(0.02, 0.05), None, Familiarity(0.09, 0.05),
              Familiarity(0.03, 0.05), Familiarity(0.04, 0.05)]   # row 2: an SMI pane, say: not checked
    summary = Scored(samples, scores, 0.5, "m", checks).familiarity_summary()
    keep = [0, 1, 4, 5]
    assert summary == {"unfamiliar": 1, "rows": 5, "threshold": 0.05,
                       "auc_familiar": pytest.approx(roc_auc(np.array(labels)[keep], scores[keep]), abs=1e-12)}
    assert Scored(samples, scores, 0.5, "m", None).familiarity_summary() is None
    rows = Scored(samples, scores, 0.5, "m", checks).rows()
    assert rows[2].keys() == {"image", "case_id", "label", "score"} and rows[3]["familiar"] is False
