"""Self-supervised adaptation (export/ssl_pretrain.py): the SimSiam loss against a float64 computation,
the collapse monitor, the fold's crops (no held-out case), and a short run that the nodule recipe's
``--init`` reads."""

import numpy as np
import pytest

from .conftest import needs_torch
from .test_guidance import _write_csv

pytestmark = needs_torch


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_simsiam_loss_matches_float64_and_stops_the_gradient_at_the_projections():
    import torch

    from edge_thyroid.export.ssl_pretrain import simsiam_loss

    rng = np.random.default_rng(0)
    p1, z1, p2, z2 = (torch.tensor(rng.normal(size=(6, 16)), dtype=torch.float32, requires_grad=True) for _ in range(4))
    loss = simsiam_loss(p1, z1, p2, z2)
    a = [t.detach().double().numpy() for t in (p1, z1, p2, z2)]
    expected = -(_cosine(a[0], a[3]).mean() + _cosine(a[2], a[1]).mean()) / 2
    assert abs(float(loss.detach()) - expected) <= 1e-6
    loss.backward()
    assert p1.grad is not None and float(p1.grad.abs().sum()) > 0
    assert z1.grad is None and z2.grad is None           # stop-gradient: the projections are targets
    same = torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32)
    assert abs(float(simsiam_loss(same, same, same, same)) + 1.0) <= 1e-6   # identical views: -1


def test_representation_spread_flags_collapse():
    import torch

    from edge_thyroid.export.ssl_pretrain import representation_spread

    rng = np.random.default_rng(1)
    healthy = representation_spread(torch.tensor(rng.normal(size=(4000, 64)), dtype=torch.float32))
    assert abs(healthy - 1 / np.sqrt(64)) <= 0.1 / np.sqrt(64)
    collapsed = torch.tensor(np.tile(rng.normal(size=(1, 64)), (32, 1)), dtype=torch.float32)
    assert representation_spread(collapsed) <= 1e-6


def test_a_fold_run_never_sees_a_held_out_case_and_its_backbone_starts_the_recipe(tmp_path):
    import torch

    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint
    from edge_thyroid.export.datapack import build_pack
    from edge_thyroid.export.models import MultimodalClassifier
    from edge_thyroid.export.nodule_training import fold_assignment
    from edge_thyroid.export.ssl_pretrain import fit_simsiam, ssl_crops
    from edge_thyroid.export.train import init_from

    pack = build_pack(_write_csv(tmp_path), size=32, progress=False)
    folds = fold_assignment(pack, 2)
    crops = ssl_crops(pack, 1, 2)
    held_out_cases = set(pack.case_ids[folds == 1].tolist())
    assert held_out_cases and not held_out_cases & set(pack.case_ids[crops].tolist())
    assert (pack.labels[crops] < 0).any()                       # unlabelled crops of training cases do count
    assert ssl_crops(pack, None, 2).tolist() == list(range(len(pack)))
    torch.manual_seed(0)
    start = MultimodalClassifier("resnet50")
    save_checkpoint(tmp_path / "start.pt", start, CheckpointInfo(image_size=32))
    before = start.state_dict()["backbone.conv1.weight"].clone()
    model = fit_simsiam(pack, crops, tmp_path / "ssl", init=str(tmp_path / "start.pt"), epochs=1, batch_size=4,
                        image_size=32, threads=1)
    assert (tmp_path / "ssl" / "final.pt").is_file() and (tmp_path / "ssl" / "last.pt").is_file()
    fresh = MultimodalClassifier("resnet50")
    assert init_from(fresh, tmp_path / "ssl" / "final.pt") > 300
    torch.testing.assert_close(fresh.state_dict()["backbone.conv1.weight"], model.state_dict()["backbone.conv1.weight"])
    assert not torch.equal(model.state_dict()["backbone.conv1.weight"], before)   # it trained from the start it was given
    with pytest.raises(Exception, match="other settings"):
        fit_simsiam(pack, crops, tmp_path / "ssl", init=str(tmp_path / "start.pt"), epochs=2, batch_size=4, image_size=32, threads=1)
