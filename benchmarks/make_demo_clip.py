"""Build the bundled demo clip: four DDTI thyroid crops composed into a workstation screen.

    .venv/bin/python benchmarks/make_demo_clip.py            # reads ../shared/data/ddti
    .venv/bin/python benchmarks/make_demo_clip.py --data /path/to/ddti --out /tmp/clip

Writes edge_thyroid/data/demo_clip.mp4 (MPEG-4, 960x540, 12 fps, 16 s), demo_clip.layout.json (the
B-mode pane and its nodule box) and demo_clip.json (which crops, their TI-RADS labels, the timeline,
the credit).
Crops come from the validation side of the training split (DDTI case-level fold 0 of 4, seed 0):
two labelled benign and two malignant, from four different patients, shown benign, malignant,
benign, malignant, 4 s each. The screen moves a little (probe sway) and its speckle decorrelates
from frame to frame; each segment ends with 0.4 s of blank pane (probe lifted) and the second one
holds a 2.5 s freeze, so the demo shows abstention too. Re-running gives the same clip.

Credit: DDTI, Digital Database of Thyroid Images (Pedraza et al., Proc. SPIE 9287, 2015), in the
nodule-centred crops of the public DDTI_preprocessing repository. Labels are TI-RADS categories
binarised (2-3 benign, 4a-5 malignant), a radiologist's risk category, not a biopsy result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ddti"
OUT = REPO / "edge_thyroid" / "data"

SCREEN = (960, 540)
PANE = (280, 70, 400, 400)      # x, y, w, h of the B-mode pane (crops are square)
FPS = 12
SEGMENT_S = 4.0
BLANKS = "3.6-4,7.6-8,11.6-12"  # probe lifted at the end of each segment
FREEZE = "5-7.5"                 # the operator freezes the second image for 2.5 s
ORDER = (0, 1, 0, 1)             # benign, malignant, benign, malignant
CREDIT = ("DDTI, Digital Database of Thyroid Images (Pedraza et al., 'An open access thyroid ultrasound image "
          "database', Proc. SPIE 9287, 2015; CIM@LAB, Universidad Nacional de Colombia)")


def pick_crops(csv_path: Path) -> list:
    """Two benign and two malignant validation crops from four different cases, deterministically."""
    from edge_thyroid.dataset import read_samples, split_by_case

    _, validation = split_by_case(read_samples(csv_path), folds=4, fold=0, seed=0)
    chosen, cases = [], set()
    wanted = {0: 2, 1: 2}
    for sample in sorted(validation, key=lambda s: (int(s.case_id) if s.case_id.isdigit() else 0, s.image.name)):
        if wanted.get(sample.label, 0) > 0 and sample.case_id not in cases:
            chosen.append(sample)
            cases.add(sample.case_id)
            wanted[sample.label] -= 1
    if any(wanted.values()):
        raise SystemExit(f"not enough labelled validation crops in {csv_path}")
    by_label = {0: [s for s in chosen if s.label == 0], 1: [s for s in chosen if s.label == 1]}
    return [by_label[label].pop(0) for label in ORDER]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="DDTI folder with labels.csv")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for demo_clip.mp4/.layout.json/.json")
    args = parser.parse_args(argv)
    from edge_thyroid.layout import parse_layout
    from edge_thyroid.sources import SourceOptions
    from edge_thyroid.sources.synthetic import SyntheticSource

    csv_path = args.data / "labels.csv"
    if not csv_path.is_file():
        raise SystemExit(f"DDTI labels not found at {csv_path}; pass --data")
    crops = pick_crops(csv_path)
    content = [cv2.imread(str(s.image), cv2.IMREAD_GRAYSCALE) for s in crops]
    if any(image is None for image in content):
        raise SystemExit("a chosen crop could not be read")

    layout_doc = {"name": "demo", "screen": {"width": SCREEN[0], "height": SCREEN[1]},
                  "panes": [{"modality": "bmode", "roi": list(PANE)}],
                  # each frame is a nodule-centred crop filling the pane: the crop region is the nodule box
                  "nodule": list(PANE)}
    layout = parse_layout(layout_doc, origin="demo layout")
    frames = int(round(len(crops) * SEGMENT_S * FPS))
    spec = (f"synthetic?size={SCREEN[0]}x{SCREEN[1]}&fps={FPS}&switch={SEGMENT_S}&blank={BLANKS}&freeze={FREEZE}"
            f"&frames={frames}&seed=7")
    source = SyntheticSource(spec, SourceOptions(realtime=False, layout=layout), content=content,
                             title="edge-thyroid demo: DDTI thyroid crops")
    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.out / "demo_clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SCREEN)
    if not writer.isOpened():
        raise SystemExit(f"cannot write {clip}")
    with source:
        while (item := source.read()) is not None:
            writer.write(item.frame)
    writer.release()
    (args.out / "demo_clip.layout.json").write_text(json.dumps(layout_doc, indent=2) + "\n", encoding="utf-8")
    record = {
        "clip": clip.name, "frames": frames, "fps": FPS, "screen": list(SCREEN), "pane": list(PANE),
        "segments": [{"start_s": i * SEGMENT_S, "end_s": (i + 1) * SEGMENT_S, "image": s.image.name,
                      "case_id": s.case_id, "label": "malignant" if s.label else "benign"}
                     for i, s in enumerate(crops)],
        "blank_s": BLANKS, "freeze_s": FREEZE, "split": "DDTI case-level fold 0 of 4 (seed 0), validation side",
        "label_source": "TI-RADS category binarised (2-3 benign, 4a-5 malignant); not a biopsy result",
        "credit": CREDIT, "made_by": "benchmarks/make_demo_clip.py",
    }
    (args.out / "demo_clip.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {clip} ({clip.stat().st_size / 1e6:.2f} MB, {frames} frames) from "
          + ", ".join(f"{s.image.name} ({'malignant' if s.label else 'benign'})" for s in crops), file=sys.stderr)


if __name__ == "__main__":
    main()
