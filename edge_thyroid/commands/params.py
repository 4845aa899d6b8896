"""Command-line values several commands parse the same way."""

from __future__ import annotations

import click


def parse_size(text: str, *, low: int = 1, high: int = 16384) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (e.g. 1920x1080) -> (width, height), each in ``low..high``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") from None
    if not (low <= width <= high and low <= height <= high):
        raise click.BadParameter(f"{text!r}: width and height must be in {low}..{high}")
    return width, height
