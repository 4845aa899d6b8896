"""Command-line values several commands parse the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import InputError


def parse_size(text: str, *, low: int = 1, high: int = 16384) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (e.g. 1920x1080) -> (width, height), each in ``low..high``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") from None
    if not (low <= width <= high and low <= height <= high):
        raise click.BadParameter(f"{text!r}: width and height must be in {low}..{high}")
    return width, height


def make_output_folder(folder: str | Path, flag: str) -> None:
    """Create the folder an output option writes into before the work starts: a place that cannot hold it
    is then one line at once, not a traceback after every image was scored."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{flag}: cannot create the folder {folder} ({exc.strerror or exc}); expected a writable "
                         "folder path") from None


def prevalence_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """--prevalence (passed on as ``prevalence_share``): read p at a site's own share of malignant nodules."""
    return click.option(
        "--prevalence", "prevalence_share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
        metavar="SHARE",
        help="Show p(malignant) and the threshold as they read where SHARE of the nodules seen are malignant "
             "(e.g. 0.1), moved from the share the bundle's p assumes (its probability.prior, 0.5 for the demo "
             "model) by Bayes' rule. Decisions do not change: they are made on the model's own p.")(function)
