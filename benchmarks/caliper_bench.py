"""Caliper finder on frozen frames composed from real DDTI crops: detection rate, box IoU, negatives, time.

    /work/venvs/roi/bin/python benchmarks/caliper_bench.py                 # reads ../shared/data/ddti
    /work/venvs/roi/bin/python benchmarks/caliper_bench.py --limit 100 --out /tmp/calipers.json

Each crop (300x300, real speckle, its nodule mask) is scaled into the B-mode pane of a larger
synthetic workstation screen at a random offset (the rest of the pane is the crop mirrored, so the
nodule is not at the pane's centre). The screen has fixed furniture: text and a scale bar outside the
pane; depth ticks, an orientation '+' and a text label inside it. As the stream does, the furniture is
learnt from live frames (other crops under the same furniture) with :class:`FixedPixels`.

``--still`` measures what ``edge-thyroid classify --roi calipers`` does with screenshots instead: the whole
screen is searched, and the furniture is learnt (:class:`StillFurniture`) from ``--other-stills N`` other
measured screenshots of the same screen plus the image itself (0: a lone screenshot, nothing learnt).

    python benchmarks/caliper_bench.py --still --other-stills 8 --out benchmarks/results/calipers_still_8.json

* Positive frame: calipers at the mask's extreme points: four (left, right, top, bottom) or two (the
  ends of the longer axis), in a random style: '+' or 'x', 7-15 px, white/yellow/green/cyan, solid or
  hollow, 1 or 2 px strokes. Truth = the mask's bounding box. Reported: found a box, IoU of the marks'
  extent with the truth (no margin on either), IoU of the box used (margin) with the truth grown by
  the same margin, marks placed within 3 px.
* Negative frame: the same composition without calipers drawn. Some DDTI crops have calipers burned
  in by the original scanner; a box found on those is counted as a false positive all the same.

Goals (issue 13): IoU >= 0.6 on >= 90% of positives, no box on >= 98% of negatives, <= 5 ms a frame.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_thyroid.calipers import (CROSS, PLUS, CaliperFinder, FixedPixels, StillFurniture, box_from_marks,  # noqa: E402
                                   draw_mark)

DATA = REPO.parent / "shared" / "data" / "ddti"
OUT = REPO / "benchmarks" / "results" / "calipers.json"
SCREEN = (1024, 720)              # width, height
PANE = (200, 80, 620, 560)        # x, y, w, h
COLOURS = {"white": (255, 255, 255), "yellow": (0, 255, 255), "green": (0, 255, 0), "cyan": (255, 255, 0)}
LIVE_FRAMES = 8


def load_crops(data: Path, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, grey crop, bool mask) for every crop with a non-empty mask."""
    crops = []
    with open(data / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            image = cv2.imread(str(data / row["image"]), cv2.IMREAD_GRAYSCALE)
            capture = cv2.VideoCapture(str(data / row["mask"]))   # masks are GIFs
            ok, mask = capture.read()
            capture.release()
            if image is None or not ok or mask[:, :, 0].max() < 128:
                continue
            crops.append((row["image"], image, mask[:, :, 0] >= 128))
            if limit and len(crops) >= limit:
                break
    return crops


def screen_with_furniture() -> np.ndarray:
    """An empty workstation screen: fixed furniture only (the pane is filled per frame)."""
    screen = np.full((SCREEN[1], SCREEN[0], 3), 16, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(screen, "THYROID L   12L5   GN 62   DR 70   FR 28", (20, 40), font, 0.7, (230, 230, 230), 1)
    cv2.putText(screen, "MI 1.1  TIs 0.3", (840, 120), font, 0.5, (200, 200, 200), 1)
    x, y, w, h = PANE
    cv2.line(screen, (x + w + 12, y), (x + w + 12, y + h), (220, 220, 220), 1)    # depth scale
    for depth in range(0, h, 40):
        cv2.line(screen, (x + w + 12, y + depth), (x + w + 20, y + depth), (220, 220, 220), 1)
    cv2.rectangle(screen, (40, 600), (120, 680), (180, 180, 180), 1)               # probe icon
    cv2.line(screen, (60, 640), (100, 640), (180, 180, 180), 1)
    return screen


def furniture_in_pane(pane: np.ndarray) -> None:
    """Fixed marks drawn inside the pane by the scanner: depth ticks, an orientation '+', a label."""
    h, w = pane.shape[:2]
    for depth in range(20, h, 40):
        cv2.line(pane, (w - 9, depth), (w - 3, depth), (255, 255, 255), 1)
    draw_mark(pane, 34, 34, PLUS, 11, (255, 255, 255), hollow=2)
    cv2.putText(pane, "R LOBE x", (w - 150, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)


def place(crop: np.ndarray, scale: float, offset: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The pane's pixels: the crop scaled, at ``offset`` inside the pane, the rest mirrored."""
    _, _, w, h = PANE
    scaled = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    ox, oy = offset
    pane = cv2.copyMakeBorder(scaled, oy, max(0, h - oy - scaled.shape[0]), ox, max(0, w - ox - scaled.shape[1]),
                              cv2.BORDER_REFLECT_101)[:h, :w]
    return cv2.cvtColor(pane, cv2.COLOR_GRAY2BGR), scale, offset


def extreme_points(mask: np.ndarray) -> dict[str, tuple[float, float]]:
    ys, xs = np.nonzero(mask)

    def middle(sel: np.ndarray) -> tuple[float, float]:
        return float(np.median(xs[sel])), float(np.median(ys[sel]))

    return {"left": middle(xs == xs.min()), "right": middle(xs == xs.max()),
            "top": middle(ys == ys.min()), "bottom": middle(ys == ys.max())}


def iou(a: tuple[int, int, int, int] | None, b: tuple[float, float, float, float]) -> float:
    if a is None:
        return 0.0
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def compose(crop: np.ndarray, mask: np.ndarray, screen: np.ndarray, rng: np.random.Generator, calipers: bool
            ) -> tuple[np.ndarray, dict]:
    scale = float(rng.uniform(1.4, 1.8))
    room_x, room_y = PANE[2] - int(300 * scale), PANE[3] - int(300 * scale)
    pane, scale, (ox, oy) = place(crop, scale, (int(rng.integers(0, room_x + 1)), int(rng.integers(0, room_y + 1))))
    furniture_in_pane(pane)
    px, py = PANE[0] + ox, PANE[1] + oy
    ys, xs = np.nonzero(mask)
    truth = (px + xs.min() * scale, py + ys.min() * scale, (xs.max() - xs.min() + 1) * scale,
             (ys.max() - ys.min() + 1) * scale)
    info: dict = {"truth": truth, "marks": []}
    if calipers:
        ends = extreme_points(mask)
        width, height = truth[2], truth[3]
        names = (["left", "right", "top", "bottom"] if rng.random() < 0.5
                 else (["left", "right"] if width >= height else ["top", "bottom"]))
        size = int(rng.choice([7, 9, 11, 13, 15]))
        style = {"shape": str(rng.choice([PLUS, CROSS])), "size": size,
                 "colour": str(rng.choice(list(COLOURS))), "hollow": int(rng.integers(0, 3)) if size >= 9 else 0,
                 "thickness": 2 if rng.random() < 0.25 else 1}
        for name in names:
            ex, ey = ends[name]
            x, y = int(round(ox + ex * scale)), int(round(oy + ey * scale))
            draw_mark(pane, x, y, style["shape"], size, COLOURS[style["colour"]], style["hollow"], style["thickness"])
            info["marks"].append((PANE[0] + x, PANE[1] + y))
        info["style"] = style
    frame = screen.copy()
    x, y, w, h = PANE
    frame[y:y + h, x:x + w] = pane
    return frame, info


def other_frames(crops: list, screen: np.ndarray, rng: np.random.Generator, count: int, calipers: bool):
    """``count`` frames of other crops under the same screen (live ones without calipers, screenshots with)."""
    for index in rng.choice(len(crops), size=min(count, len(crops)), replace=False):
        yield compose(crops[index][1], crops[index][2], screen, rng, calipers)[0]


def learn_furniture(crops: list, screen: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """What the stream knows at the freeze: pixels that stayed fixed over the live frames."""
    fixed = FixedPixels()
    x, y, w, h = PANE
    for frame in other_frames(crops, screen, rng, LIVE_FRAMES, calipers=False):
        fixed.update(frame[y:y + h, x:x + w])
    return fixed.mask


def learn_still_furniture(crops: list, screen: np.ndarray, rng: np.random.Generator, count: int) -> StillFurniture:
    """What `classify --roi calipers` learns from a folder of screenshots: other measured stills of the
    same screen (calipers on each, other patients); none for a lone screenshot."""
    furniture = StillFurniture()
    if count:   # no draw at all for none, so the frames measured are the same for every count
        for frame in other_frames(crops, screen, rng, count, calipers=True):
            furniture.add(frame)
    return furniture


def mode_name(still: bool, other_stills: int) -> str:
    if not still:
        return "frozen stream: pane, furniture learnt live"
    if not other_stills:
        return "still: whole frame, no furniture mask (a lone screenshot)"
    return f"still: whole frame, furniture learnt from {other_stills} other measured stills and itself"


def run(data: Path, limit: int | None, seed: int, still: bool = False, other_stills: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    crops = load_crops(data, limit)
    if not crops:
        raise SystemExit(f"no crops with masks under {data}")
    screen = screen_with_furniture()
    fixed = learn_furniture(crops, screen, rng)
    stills = learn_still_furniture(crops, screen, rng, other_stills) if still else None
    finder = CaliperFinder()
    positives, negatives, times = [], [], []
    for name, crop, mask in crops:
        for with_calipers in (True, False):
            frame, info = compose(crop, mask, screen, rng, with_calipers)
            if still:   # `classify --roi calipers` on a screenshot: the whole frame, and the run's stills
                seen = copy.deepcopy(stills)
                seen.add(frame)              # the image itself is one of the run's stills
                pane, furniture = None, seen.mask(frame)   # learnt once per run, as classify does: not timed
            else:
                pane, furniture = PANE, fixed
            start = time.perf_counter()
            found = finder.find(frame, pane, furniture)
            times.append((time.perf_counter() - start) * 1e3)
            if not with_calipers:
                negatives.append({"image": name, "box": found.box is not None, "marks": len(found.marks)})
                continue
            truth = info["truth"]
            grown = box_from_marks([(truth[0], truth[1]), (truth[0] + truth[2], truth[1] + truth[3]),
                                    (truth[0], truth[1] + truth[3])], finder.margin)
            placed = sum(any(abs(m.x - x) <= 3 and abs(m.y - y) <= 3 for m in found.marks) for x, y in info["marks"])
            positives.append({"image": name, **info["style"], "drawn": len(info["marks"]), "placed": placed,
                              "found": len(found.marks), "box": found.box is not None,
                              "iou_extent": iou(found.extent, truth),
                              "iou_box": iou(found.box, grown[0]) if grown else 0.0})
    return {**summarise(positives, negatives, times, seed), "mode": mode_name(still, other_stills)}


def summarise(positives: list[dict], negatives: list[dict], times: list[float], seed: int) -> dict:
    def rate(rows: list[dict], test) -> float:
        return round(sum(bool(test(r)) for r in rows) / max(1, len(rows)), 4)

    by_style = {}
    for key in ("shape", "colour", "size", "hollow", "thickness", "drawn"):
        by_style[key] = {str(v): {"frames": sum(r[key] == v for r in positives),
                                  "iou_extent_ge_0.6": rate([r for r in positives if r[key] == v],
                                                            lambda r: r["iou_extent"] >= 0.6)}
                         for v in sorted({r[key] for r in positives})}
    t = np.asarray(times)
    return {
        "what": "caliper finder on frozen screens composed from DDTI crops (benchmarks/caliper_bench.py)",
        "seed": seed, "screen": list(SCREEN), "pane": list(PANE),
        "positives": len(positives), "negatives": len(negatives),
        "detected": rate(positives, lambda r: r["box"]),
        "iou_extent_ge_0.6": rate(positives, lambda r: r["iou_extent"] >= 0.6),
        "iou_box_ge_0.6": rate(positives, lambda r: r["iou_box"] >= 0.6),
        "iou_extent_median": round(float(np.median([r["iou_extent"] for r in positives])), 4),
        "marks_placed_within_3px": round(sum(r["placed"] for r in positives) / sum(r["drawn"] for r in positives), 4),
        "negatives_without_box": rate(negatives, lambda r: not r["box"]),
        "negatives_with_a_mark": rate(negatives, lambda r: r["marks"] > 0),
        "ms_per_frame": {"median": round(float(np.median(t)), 3), "p95": round(float(np.percentile(t, 95)), 3),
                         "max": round(float(t.max()), 3)},
        "by_style": by_style,
        "false_positive_images": [r["image"] for r in negatives if r["box"]],
        "missed_images": [r["image"] for r in positives if r["iou_extent"] < 0.6],
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "opencv": cv2.__version__, "threads": cv2.getNumThreads()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None, help="use the first N crops (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--still", action="store_true",
                        help="search the whole screen without a furniture mask, as `classify --roi calipers` does "
                             "with a screenshot (default: the stream's frozen-frame search)")
    parser.add_argument("--other-stills", type=int, default=0,
                        help="with --still: measured screenshots of the same screen in the run, from which the "
                             "screen's furniture is learnt (0: a lone screenshot, nothing learnt)")
    args = parser.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        print(f"error: no DDTI labels.csv under {args.data}; expected ../shared/data/ddti", file=sys.stderr)
        return 2
    if args.other_stills and not args.still:
        parser.error("--other-stills needs --still")
    report = run(args.data, args.limit, args.seed, args.still, args.other_stills)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    brief = {k: report[k] for k in ("positives", "negatives", "detected", "iou_extent_ge_0.6", "iou_box_ge_0.6",
                                     "iou_extent_median", "marks_placed_within_3px", "negatives_without_box",
                                     "ms_per_frame")}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
