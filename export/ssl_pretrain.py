"""Self-supervised adaptation to thyroid crops (SimSiam) between BUSI pre-training and fine-tuning.

    python -m edge_thyroid.export.ssl_pretrain --data runs/ddti_pack.npz --fold 0 --init runs/pretrain/final.pt \\
        --out runs/ssl/fold0 --epochs 10
    python benchmarks/cross_validate.py ... --init 'runs/ssl/fold{fold}/final.pt'

BUSI pre-training taught the backbone breast lesions with labels; the DDTI crops, labelled or not, show
thyroid tissue it never saw. SimSiam (Chen & He, 2021) needs no labels and no negative pairs, so it works
with small batches: two augmented views of one crop (the recipe's own boxes, affine, scanner look and
burned-in marks: export/nodule_training.augmented_view) go through the backbone, a projector and a
predictor, and each view's prediction is pulled towards the other view's projection, which is held fixed
(stop-gradient keeps it from collapsing to a constant).

Leakage: the crops come from the training side of one case-level fold only (``--fold K``: every case
not in fold K, labelled or not; ``--all``: every crop, for the shipped model), so a cross-validated
fine-tuning from ``fold{K}`` never saw a held-out crop, not even without its label.

Writes OUT/last.pt (resumable, every epoch) and OUT/final.pt: the backbone in the project's checkpoint
format (head untouched), which ``--init`` of the nodule recipe reads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_thyroid.kernels.reference import PreprocessSpec

from .checkpoint import CheckpointInfo, save_checkpoint
from .datapack import DataPack, pack_for
from .models import BACKBONE_CHANNELS, MODALITIES, MultimodalClassifier
from .nodule_training import NoduleRecipe, augmented_view, fold_assignment, pick_device, to_pixels
from .train import init_from, lr_lambda


def simsiam_loss(p1: torch.Tensor, z1: torch.Tensor, p2: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient on the projections (-1: views agree)."""
    return -(F.cosine_similarity(p1, z2.detach(), dim=1).mean() + F.cosine_similarity(p2, z1.detach(), dim=1).mean()) / 2


def representation_spread(z: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised projections: ~1/sqrt(dim) when healthy, 0 when collapsed."""
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


def ssl_crops(pack: DataPack, fold: int | None, folds: int = 4) -> np.ndarray:
    """The crops a self-supervised run may see: every crop (``fold`` None) or the training side of one
    case-level fold, labelled or not (a held-out case's unlabelled crops stay out too)."""
    if fold is None:
        return np.arange(len(pack))
    return np.flatnonzero(fold_assignment(pack, folds) != fold)


class SimSiam(nn.Module):
    """Backbone (pooled features) -> projector (dim) -> predictor (dim), as in the SimSiam paper, narrowed."""

    def __init__(self, base: MultimodalClassifier, dim: int = 512, hidden: int = 128) -> None:
        super().__init__()
        self.base = base
        channels = BACKBONE_CHANNELS[base.backbone_name]
        self.projector = nn.Sequential(nn.Linear(channels, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                       nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))
        self.predictor = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, dim))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z1 = self.projector(self.base.feature_maps(view1).mean(dim=(2, 3)))
        z2 = self.projector(self.base.feature_maps(view2).mean(dim=(2, 3)))
        return self.predictor(z1), z1, self.predictor(z2), z2


class TwoViews(torch.utils.data.Dataset):
    """Two independently augmented views of each drawn crop (seeded per epoch and draw)."""

    def __init__(self, pack: DataPack, draws: np.ndarray, recipe: NoduleRecipe, epoch: int) -> None:
        self.pack, self.draws, self.recipe, self.epoch = pack, draws, recipe, epoch
        self.spec = PreprocessSpec(image_size=recipe.image_size)

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, k: int):
        i = int(self.draws[k])
        views = []
        for view in (0, 1):
            rng = np.random.default_rng((self.recipe.seed, self.epoch, k, view, 7))
            image, _ = augmented_view(self.pack.images[i], self.pack.masks[i], self.recipe, rng)
            views.append(torch.from_numpy(to_pixels(image, self.spec)))
        return views[0], views[1]


def fit_simsiam(pack: DataPack, index: np.ndarray, out: Path, *, init: str | None, epochs: int, batch_size: int = 32,
                lr: float = 0.005, seed: int = 0, image_size: int = 128, backbone: str = "resnet50",
                threads: int = 0, device: str = "auto", resume: bool = True) -> MultimodalClassifier:
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = pick_device(device)
    out.mkdir(parents=True, exist_ok=True)
    recipe = NoduleRecipe(backbone=backbone, image_size=image_size, seed=seed)
    base = MultimodalClassifier(backbone, MODALITIES)
    if init:
        click.echo(f"initialised {init_from(base, init)} tensors from {init}", err=True)
    model = SimSiam(base).to(dev)
    steps_per_epoch = len(index) // batch_size
    if steps_per_epoch < 1:
        raise click.ClickException(f"{len(index)} crops do not fill one batch of {batch_size}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(epochs * steps_per_epoch, steps_per_epoch))
    state = {"epoch": 0, "history": [], "elapsed_s": 0.0}
    settings = {"init": init, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                "image_size": image_size, "backbone": backbone, "crops": int(len(index))}
    last = out / "last.pt"
    if resume and last.exists():
        payload = torch.load(last, map_location=dev, weights_only=True)
        if payload.get("settings") != settings:
            raise click.ClickException(f"{last} was written with other settings; use a new --out or --no-resume")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = payload["state"]
    started = time.monotonic() - state["elapsed_s"]
    for epoch in range(state["epoch"], epochs):
        model.train()
        draws = np.random.default_rng((seed, epoch)).permutation(index)
        loader = torch.utils.data.DataLoader(TwoViews(pack, draws, recipe, epoch), batch_size=batch_size,
                                             shuffle=False, drop_last=True)
        total, spread = 0.0, 0.0
        bar = tqdm(loader, desc=f"simsiam {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
        for view1, view2 in bar:
            p1, z1, p2, z2 = model(view1.to(dev), view2.to(dev))
            loss = simsiam_loss(p1, z1, p2, z2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            spread += representation_spread(z1)
            bar.set_postfix(loss=f"{total / (bar.n + 1):.3f}", spread=f"{spread / (bar.n + 1):.4f}")
        elapsed = time.monotonic() - started
        record = {"epoch": epoch + 1, "loss": total / len(loader), "spread": spread / len(loader),
                  "healthy_spread": float(1 / np.sqrt(z1.shape[1])), "elapsed_s": round(elapsed, 1)}
        state["history"].append(record)
        state["epoch"], state["elapsed_s"] = epoch + 1, elapsed
        tmp = last.with_suffix(".pt.tmp")
        torch.save({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state}, tmp)
        tmp.replace(last)
        (out / "history.json").write_text(json.dumps(state["history"], indent=1))
        click.echo(f"simsiam epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}  spread {record['spread']:.4f} "
                   f"(collapse: 0, healthy ~{record['healthy_spread']:.4f})  ({elapsed / 60:.1f} min)", err=True)
    base = model.base.cpu().eval()
    info = CheckpointInfo(backbone=backbone, modalities=MODALITIES, trained_modalities=(), image_size=image_size,
                          training={"self_supervised": "SimSiam on DDTI crops (no labels)", "settings": settings,
                                    "data": pack.meta, "history": state["history"]})
    save_checkpoint(out / "final.pt", base, info)
    return base


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Labelled CSV or data pack (.npz).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder (last.pt, final.pt).")
@click.option("--fold", type=int, default=None, help="Use only the training side of this case-level fold.")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--all", "use_all", is_flag=True, help="Use every crop (for the model trained on all data).")
@click.option("--init", default=None, type=click.Path(exists=True, dir_okay=False), help="Checkpoint whose backbone starts the run.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=0.005, show_default=True,
              help="Peak SGD learning rate (SimSiam's 0.05 x batch/256, a little lower: it adapts a pre-trained backbone).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=int, default=128, show_default=True)
@click.option("--threads", type=int, default=0)
@click.option("--device", default="auto", show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True)
def main(data, out_dir, fold, folds, use_all, init, epochs, batch_size, lr, seed, image_size, threads, device,
         resume) -> None:
    """Self-supervised (SimSiam) adaptation of a backbone to the crops of one fold's training side, or all."""
    if (fold is None) == (not use_all):
        raise click.UsageError("give exactly one of --fold K or --all")
    if fold is not None and not 0 <= fold < folds:
        raise click.BadParameter(f"must be in [0, {folds}), got {fold}", param_hint="--fold")
    pack = pack_for(data)
    index = ssl_crops(pack, fold, folds)
    fit_simsiam(pack, index, Path(out_dir), init=init, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                image_size=image_size, threads=threads, device=device, resume=resume)
    click.echo(json.dumps({"checkpoint": str(Path(out_dir) / "final.pt"), "crops": int(len(index))}))


if __name__ == "__main__":
    main()
