"""``--trust KEY.pem``: the option every command that loads a bundle shares.

It configures the process's trust policy (:mod:`edge_thyroid.signing`) before the command runs, so
every bundle the command loads (directly or through an engine, a scorer or a benchmark peer) is
checked against the same keys. Keys come from each ``--trust`` and from the file named by
``$EDGE_THYROID_TRUSTED_KEYS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..signing import TRUST_ENV


def _notice(message: str) -> None:
    click.echo(f"notice: {message}", err=True)


def _install(ctx: click.Context, _param: click.Parameter, paths: tuple[str, ...]) -> None:
    from ..signing import TrustPolicy, environment_keys, install_policy, load_trusted_keys

    keys = (*load_trusted_keys(paths), *environment_keys()) if paths else environment_keys()
    ctx.call_on_close(install_policy(TrustPolicy(tuple(keys), notice=_notice)))


def trust_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --trust (repeatable); the command function does not receive it."""
    return click.option(
        "--trust", "trust", multiple=True, type=click.Path(dir_okay=False), expose_value=False, callback=_install,
        metavar="PUBLIC.pem",
        help=f"Only load bundles signed by this Ed25519 public key (repeatable; also the keys in the file named by "
             f"${TRUST_ENV}). Unsigned, wrongly signed or modified bundles are refused.")(function)
