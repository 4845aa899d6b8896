"""A compact, self-checking pack of a labelled crop set: one .npz that training reads anywhere.

    python -m edge_thyroid.export.datapack --data ../shared/data/ddti/labels.csv -o runs/ddti_pack.npz
    python -m edge_thyroid.export.datapack --data ../shared/data/ddti/labels.csv -o runs/ddti_160.npz --size 160

The pack holds uint8 grayscale images and nodule masks (resized to ``--size`` when given: e.g. 160 px
to carry a pack to a GPU machine), the binary label (-1: unlabelled), the TI-RADS level as an ordinal
index (-1: none), the case id, the file name and the sha256 of every source file plus the CSV's, so a
bundle can record exactly which data it saw. Training reads the same pack on the CPU and on a GPU.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from edge_thyroid.dataset import LABELS

# TI-RADS levels in order; the ordinal target is the index into this tuple.
TIRADS_LEVELS: tuple[str, ...] = ("2", "3", "4a", "4b", "4c", "5")
PACK_FORMAT = "edge-thyroid-datapack-1"


@dataclass
class DataPack:
    images: np.ndarray        # N x H x W uint8
    masks: np.ndarray         # N x H x W bool
    labels: np.ndarray        # N int8: 0 benign, 1 malignant, -1 unlabelled
    tirads: np.ndarray        # N int8: index into TIRADS_LEVELS, -1 none
    case_ids: np.ndarray      # N str
    names: np.ndarray         # N str (image path relative to the CSV)
    meta: dict

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> np.ndarray:
        return self.labels >= 0

    def subset(self, index: np.ndarray) -> "DataPack":
        index = np.asarray(index)
        return DataPack(self.images[index], self.masks[index], self.labels[index], self.tirads[index],
                        self.case_ids[index], self.names[index], self.meta)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    # GIF masks: OpenCV reads GIF only in some builds, PIL always.
    from PIL import Image

    with Image.open(path) as handle:
        mask = np.asarray(handle.convert("L")) > 127
    if mask.shape != shape:
        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def build_pack(csv_path: str | Path, size: int | None = None, progress: bool = True) -> DataPack:
    """Read every row of a CSV (image, mask, case_id, tirads, label[, modality])."""
    from tqdm import tqdm

    csv_path = Path(csv_path)
    root = csv_path.parent
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    missing = {"image", "case_id", "label"} - set(rows[0])
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; expected image, mask, case_id, tirads, label")
    images, masks, labels, tirads, cases, names, file_sha = [], [], [], [], [], [], {}
    for row_number, row in enumerate(tqdm(rows, desc="packing", disable=not progress), start=2):
        path = root / row["image"]
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{csv_path}:{row_number}: cannot decode image {path}")
        file_sha[row["image"]] = _sha256_bytes(data)
        mask_name = (row.get("mask") or "").strip()
        if mask_name:
            mask = _read_mask(root / mask_name, image.shape)
            file_sha[mask_name] = _sha256_bytes((root / mask_name).read_bytes())
        else:
            mask = np.zeros(image.shape, dtype=bool)
        if size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        if images and image.shape != images[0].shape:
            raise ValueError(f"{csv_path}:{row_number}: image is {image.shape}, the first was {images[0].shape}; "
                             "pass --size to bring every crop to one size")
        raw_label = (row.get("label") or "").strip().lower()
        if raw_label and raw_label not in LABELS:
            raise ValueError(f"{csv_path}:{row_number}: label {raw_label!r} is not one of benign/malignant/0/1")
        level = (row.get("tirads") or "").strip().lower()
        if level and level not in TIRADS_LEVELS:
            raise ValueError(f"{csv_path}:{row_number}: tirads {level!r} is not one of {list(TIRADS_LEVELS)}")
        images.append(image)
        masks.append(mask)
        labels.append(LABELS[raw_label] if raw_label else -1)
        tirads.append(TIRADS_LEVELS.index(level) if level else -1)
        cases.append(str(row["case_id"]).strip())
        names.append(row["image"])
    meta = {
        "format": PACK_FORMAT,
        "csv": str(csv_path),
        "csv_sha256": _sha256_bytes(csv_path.read_bytes()),
        "files_sha256": _sha256_bytes(json.dumps(file_sha, sort_keys=True).encode()),
        "size": size,
        "rows": len(rows),
    }
    return DataPack(np.stack(images), np.stack(masks), np.asarray(labels, np.int8), np.asarray(tirads, np.int8),
                    np.asarray(cases), np.asarray(names), meta)


def build_busi_pack(csv_path: str | Path, size: int, progress: bool = True) -> DataPack:
    """BUSI as a pre-training pack: malignant -> 1, benign and normal -> 0, no masks, no TI-RADS; the one
    image that appears under both labels is dropped (see ../shared/data/README.md)."""
    from tqdm import tqdm

    from .pretrain import busi_samples

    samples = busi_samples(csv_path)
    images = []
    for s in tqdm(samples, desc="packing BUSI", disable=not progress):
        image = cv2.imread(str(s.image), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{csv_path}: cannot decode image {s.image}")
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    n = len(samples)
    csv_path = Path(csv_path)
    meta = {"format": PACK_FORMAT, "csv": str(csv_path), "csv_sha256": _sha256_bytes(csv_path.read_bytes()),
            "size": size, "rows": n}
    return DataPack(np.stack(images), np.zeros((n, size, size), bool), np.asarray([s.label for s in samples], np.int8),
                    np.full(n, -1, np.int8), np.asarray([f"busi:{s.case_id}" for s in samples]),
                    np.asarray([str(s.image.relative_to(csv_path.parent)) for s in samples]), meta)


def concat_packs(packs: list[DataPack]) -> DataPack:
    """One pack of several (same image size); the meta lists the parts."""
    shapes = {p.images.shape[1:] for p in packs}
    if len(shapes) != 1:
        raise ValueError(f"packs have different image sizes {sorted(shapes)}; build them with one --size")
    field = lambda name: np.concatenate([getattr(p, name) for p in packs])  # noqa: E731
    return DataPack(field("images"), field("masks"), field("labels"), field("tirads"), field("case_ids"),
                    field("names"), {"format": PACK_FORMAT, "parts": [p.meta for p in packs], "rows": sum(map(len, packs))})


def save_pack(pack: DataPack, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, images=pack.images, masks=np.packbits(pack.masks, axis=-1), mask_width=pack.masks.shape[-1],
                        labels=pack.labels, tirads=pack.tirads, case_ids=pack.case_ids, names=pack.names,
                        meta=json.dumps(pack.meta))
    tmp.replace(path)
    return path


def load_pack(path: str | Path) -> DataPack:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != PACK_FORMAT:
                raise ValueError(f"{path}: not a data pack (format {meta.get('format')!r}, expected {PACK_FORMAT!r})")
            width = int(data["mask_width"])
            masks = np.unpackbits(data["masks"], axis=-1)[..., :width].astype(bool)
            return DataPack(data["images"], masks, data["labels"], data["tirads"], data["case_ids"], data["names"], meta)
    except (OSError, KeyError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read a data pack ({exc})") from None


def pack_for(data: str | Path, cache_dir: str | Path = "runs", size: int | None = None) -> DataPack:
    """A CSV's pack, built once and cached (keyed by the CSV's sha256), or a .npz pack as given."""
    data = Path(data)
    if data.suffix == ".npz":
        return load_pack(data)
    key = _sha256_bytes(data.read_bytes())[:12]
    cached = Path(cache_dir) / f"pack_{data.parent.name}_{key}_{size or 'native'}.npz"
    if cached.exists():
        return load_pack(cached)
    pack = build_pack(data, size=size)
    save_pack(pack, cached)
    return pack


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with image, mask, case_id, tirads, label columns (e.g. ../shared/data/ddti/labels.csv).")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Pack to write (.npz).")
@click.option("--size", type=int, default=None, help="Resize every crop to SIZE x SIZE (default: keep the native size).")
@click.option("--pretrain-with-busi", "busi_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Build the pre-training pack instead: this BUSI labels.csv (labelled) plus only the UNLABELLED "
                   "crops of --data (they belong to no validation fold); needs --size.")
def main(data_csv: str, out_path: str, size: int | None, busi_csv: str | None) -> None:
    """Pack a labelled crop set (images, masks, labels, TI-RADS, cases, sha256s) into one .npz."""
    try:
        if busi_csv:
            if not size:
                raise ValueError("--pretrain-with-busi needs --size (BUSI and DDTI crops differ in size)")
            ddti = build_pack(data_csv, size=size)
            pack = concat_packs([build_busi_pack(busi_csv, size), ddti.subset(np.flatnonzero(~ddti.labelled))])
            pack.meta["csv_sha256"] = "+".join(p.get("csv_sha256", "") for p in pack.meta["parts"])
        else:
            pack = build_pack(data_csv, size=size)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    path = save_pack(pack, out_path)
    click.echo(json.dumps({"pack": str(path), "rows": len(pack), "labelled": int(pack.labelled.sum()),
                           "image_shape": list(pack.images.shape[1:]), "bytes": path.stat().st_size,
                           "csv_sha256": pack.meta["csv_sha256"]}))


if __name__ == "__main__":
    main()
