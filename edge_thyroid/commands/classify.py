"""edge-thyroid classify: still images through a bundle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import InputError
from .params import prevalence_option
from .runtime_options import backend_settings, print_auto_choice, runtime_options
from .trust_options import trust_option

if TYPE_CHECKING:   # the finder (OpenCV) is imported only when --roi calipers is used
    import numpy as np

    from ..calipers import StillFurniture


NO_CAM = ("this model has no class activation map (its classifier is not linear over globally pooled "
          "features); no heatmap rather than a wrong one")


def _note_lone_screenshots(furniture: StillFurniture | None, frame: np.ndarray, noted: set[tuple[int, int]]) -> None:
    """Say once per image size when too few screenshots of it were given to learn the screen's furniture."""
    size = frame.shape[:2]
    if furniture is None or furniture.stills(frame) >= furniture.min_stills or size in noted:
        return
    noted.add(size)
    click.echo(f"note: {furniture.stills(frame)} image(s) of {size[1]}x{size[0]} with --roi calipers, fewer than "
               f"{furniture.min_stills}: the screen's fixed marks (an orientation '+', depth ticks, text) cannot be "
               f"told from calipers, so the whole image is searched; give {furniture.min_stills} or more screenshots "
               "of the same screen in one run to learn them", err=True)


def _cam_path(cam: str, image: Path, many: bool) -> Path:
    target = Path(cam)
    return target.with_name(f"{target.stem}_{image.stem}{target.suffix or '.png'}") if many else target


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--modality", default="bmode", show_default=True, help="Modality of the pane in each image.")
@click.option("--roi", default=None,
              help="The nodule box x,y,w,h in image pixels, or 'calipers': each image's box from the measurement "
                   "calipers on it ('+'/'x' marks at the nodule's ends; an image without them is skipped; with 5 "
                   "or more screenshots of one screen, its fixed marks are learnt from them and ignored). "
                   "Default: the whole image.")
@click.option("--list", "image_list", default=None, type=click.Path(dir_okay=False),
              help="A CSV of images with a nodule box each, instead of IMAGES: image[,roi][,modality] columns "
                   "(roi x,y,w,h, or calipers; empty: the whole image; paths relative to the CSV).")
@click.option("--model", "model_key", default=None, help="Which model of the bundle: fp32, int8, fp16 (default: int8 if present, else fp32).")
@click.option("--threads", type=int, default=None, help="Inference threads (default: ONNX Runtime's choice).")
@click.option("--cam", "cam_out", default=None, help="Write the CAM heatmap overlay PNG here (with several images: one per image, suffixed).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option("--dicom-sr", "dicom_sr", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Write a DICOM Structured Report per image (IMAGE.sr.dcm) and the Secondary Capture it refers "
                   "to (IMAGE.sc.dcm) into DIR. Needs pip install 'edge-thyroid[dicom]'.")
@prevalence_option
@runtime_options
@trust_option
def classify(bundle, images, modality, roi, image_list, model_key, threads, cam_out, as_json, dicom_sr,
             prevalence_share, **backend_kwargs) -> None:
    """Classify IMAGES (PNG/JPEG/..., read as BGR; grayscale is replicated) with BUNDLE.

    Prints p(malignant), the decision at the bundle's threshold and the per-modality logits. The
    model was trained on nodule-centred crops: give a full frame's nodule box with --roi, let --roi
    calipers find it from the sonographer's measurement marks on each image, or give one box per image
    with --list images.csv (image[,roi][,modality]). An image that cannot be used (unreadable, truncated,
    a pane under 32x32 pixels, blank or uniform, no calipers with --roi calipers) gets one 'skipped' line
    on stderr instead; after the others are printed the exit status is then 2. With a bundle that has a
    familiarity reference ('edge-thyroid familiarize'), an image unlike the model's training crops is
    marked UNFAMILIAR (JSON: "familiarity"); its p is printed as it is.

    \b
    edge-thyroid classify BUNDLE frame.png --roi calipers --json
    edge-thyroid classify BUNDLE screenshots/*.png --roi calipers --json

    Screenshots of a workstation carry fixed marks of their own (an orientation '+', depth ticks, text)
    that look like calipers; given 5 or more screenshots of the same screen in one run, what is the
    same on all of them is learnt as the screen and ignored (a lone screenshot is searched whole).
    """
    import cv2

    from ..dataset import CALIPERS, Sample, caliper_finding, read_image_list, still_furniture
    from ..engine import Engine
    from ..frames import Pane, read_image
    from ..inputs import pane_problem
    from ..prevalence import site_prevalence
    from ..visualize import overlay_prediction

    if bool(images) == bool(image_list):
        raise click.UsageError("give IMAGES or --list CSV (one of them)")
    if image_list and roi:
        raise click.UsageError("--roi applies to IMAGES; with --list give each image its box in a roi column")
    if image_list:
        try:
            rows = read_image_list(image_list)
        except (ValueError, FileNotFoundError) as exc:
            raise InputError(str(exc)) from None
    else:
        box = None
        if roi == CALIPERS:
            box = CALIPERS
        elif roi:
            box = Pane.parse(modality, roi).roi
        rows = [Sample(Path(name), None, "", modality, roi=box) for name in images]
    unusable: list[str] = []
    furniture = still_furniture(rows)   # the screen's fixed text and marks, learnt from the screenshots themselves
    noted: set[tuple[int, int]] = set()
    with Engine(bundle, model=model_key, threads=threads, **backend_settings(backend_kwargs)) as engine:
        prevalence = site_prevalence(prevalence_share, engine.bundle.manifest.probability, bundle)
        print_auto_choice(engine)
        for row in rows:
            path = row.image
            try:
                frame = read_image(path)
                calipers = None
                if row.roi == CALIPERS:   # found here rather than in row.pane, so the record can show the marks
                    _note_lone_screenshots(furniture, frame, noted)
                    calipers = caliper_finding(frame, path, furniture)
                    row = replace(row, roi=calipers.box)
                marked = row.pane(frame)                     # the box as given: what a report points at
                pane = row.pane(frame, engine.box_context)   # the box the model sees (grown by the bundle's context)
                problem = pane_problem(frame, pane.roi)
                if problem:
                    raise InputError(f"image {path}: {problem}")
                prediction = engine.classify(frame, [pane])
                decision = prediction.decision   # the model's own: the same at any --prevalence
                if prevalence is not None:
                    prediction = replace(prediction, probability=prevalence.p(prediction.probability),
                                         logit=prevalence.logit(prediction.logit),
                                         threshold=prevalence.p(prediction.threshold))
            except InputError as exc:
                # One bad image must not hide the results of the good ones: report it, go on, fail at the end.
                unusable.append(str(exc))
                click.echo(f"skipped: {exc}", err=True)
                continue
            record = {"image": str(path), **prediction.to_dict(), "decision": decision,
                      **({"probability": prevalence.to_dict()} if prevalence is not None else {})}
            if calipers is not None:
                record["calipers"] = {"box": list(calipers.box), "marks": [m.to_dict() for m in calipers.marks]}
            if cam_out and not engine.head.has_cam:
                record["cam"] = None
                record["cam_note"] = NO_CAM
                if not as_json:
                    click.echo(f"{path}: no heatmap written: {NO_CAM}", err=True)
            elif cam_out:
                target = _cam_path(cam_out, path, len(rows) > 1)
                if not cv2.imwrite(str(target), overlay_prediction(frame, prediction)):
                    raise InputError(f"cannot write CAM image {target}; expected a writable path ending in .png or .jpg")
                record["cam"] = str(target)
            if dicom_sr:
                record["dicom_sr"] = str(_write_report(Path(dicom_sr), path, frame, marked, prediction, decision, engine,
                                                       prevalence.site if prevalence is not None else None))
            if as_json:
                click.echo(json.dumps(record))
            else:
                logits = ", ".join(f"{m}={v:+.3f}" for m, v in prediction.contributions.items())
                click.echo(f"{path}: p(malignant)={prediction.probability:.4f} -> {decision} "
                           f"(threshold {prediction.threshold:.3f}"
                           + (f" at prevalence {prevalence.site:g}" if prevalence is not None else "")
                           + f"; logits {logits})"
                           + (f"; nodule box {list(calipers.box)} from {len(calipers.marks)} calipers" if calipers else "")
                           + (f"; UNFAMILIAR: unlike the model's training crops (distance "
                              f"{prediction.familiarity.distance:.3f} > {prediction.familiarity.threshold:.3f}), "
                              "read p with care" if prediction.familiarity and not prediction.familiarity.familiar else ""))
    if unusable:
        raise InputError(f"{len(unusable)} of {len(rows)} images could not be used (each named above); "
                         f"the first: {unusable[0]}")


def _write_report(directory: Path, image: Path, frame, pane, prediction, decision: str, engine,
                  prevalence: float | None) -> Path:
    from ..dicom_sr import Finding, ModelIdentity, write_report

    finding = Finding(decision, prediction.probability, None, prediction.threshold, pane.roi, pane.modality,
                      prevalence=prevalence)
    return write_report(directory / f"{image.stem}.sr.dcm", finding, ModelIdentity.of(engine), frame_bgr=frame)[-1]
