"""The options every command that runs a model shares: which backend executes the bundle's model,
and the settings backends declare. Both come from the backend registry, so a new backend (or a
registered plugin) appears here without an edit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click


class BackendChoice(click.Choice):
    """The selectable backends, read from the registry when the command line is parsed (so a backend
    registered after this module was imported is offered too); ``auto`` first where it is offered."""

    def __init__(self, *, auto: bool = False) -> None:
        self.auto = auto
        super().__init__([])

    @property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        from ..autoselect import AUTO
        from ..backends import selectable_backends

        return [AUTO, *selectable_backends()] if self.auto else selectable_backends()

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        pass  # click.Choice assigns its list in __init__; ours is always the registry's


def backend_option_decorators() -> list[Callable[..., Any]]:
    """One ``--flag`` per option the registered backends declare (e.g. openvino's --execution-precision)."""
    from ..backends import backend_options

    return [click.option(option.flag, option.name, type=click.Choice(list(option.choices)) if option.choices else str,
                         default=None, metavar=option.metavar, help=option.help)
            for option, _ in backend_options().values()]


def runtime_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --backend (default auto), --retune and each backend option (passed on as ``backend``,
    ``retune`` and the option's name)."""
    for decorator in backend_option_decorators():
        function = decorator(function)
    function = click.option(
        "--retune", is_flag=True,
        help="With --backend auto: measure the installed, gated configurations again instead of using the "
             "decision cached for this CPU, these runtime versions and this model.")(function)
    return click.option(
        "--backend", type=BackendChoice(auto=True), default="auto", show_default=True,
        help="Runtime that executes the bundle's model. auto: the fastest installed configuration whose accuracy "
             "gate the bundle records as passed, measured on this machine the first time and cached (the choice "
             "and its figures are printed at start). openvino: pip install 'edge-thyroid[openvino]'. TensorRT "
             "engines in a bundle are picked by --model.")(function)


def gate_runtime_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--backend without auto (a gate judges one named configuration) and each backend option."""
    for decorator in backend_option_decorators():
        function = decorator(function)
    return click.option(
        "--backend", type=BackendChoice(), default=None,
        help="Runtime that runs the candidate (default: ONNX Runtime for ONNX models; openvino: pip install "
             "'edge-thyroid[openvino]'). The gate is recorded for this backend and --execution-precision.")(function)


def engine_backend(backend: str | None, **given: str | None) -> dict[str, Any]:
    """Engine keyword arguments for the chosen backend; an option the backend does not take is an error."""
    from ..backends import DEFAULT_BACKEND, backend_options

    from ..autoselect import AUTO
    from ..backends.base import EXECUTION_PRECISION

    options: dict[str, Any] = {"backend": backend}
    declared = backend_options()
    for name, value in given.items():
        if value is None:
            continue
        option, owners = declared[name]
        if backend == AUTO and name == EXECUTION_PRECISION:
            pass  # auto then chooses among the configurations that run at this precision
        elif (backend or DEFAULT_BACKEND) not in owners:
            raise click.UsageError(f"{option.flag} {value} applies to --backend {' / '.join(owners)}; the "
                                   f"{backend or DEFAULT_BACKEND} backend does not take it")
        options[name] = value
    return options


def require_keyword(backend: str | None, keyword: str, flag: str) -> None:
    """A command-line setting passed straight to the backend (``keyword``) needs a backend that takes it."""
    import inspect

    from ..backends import DEFAULT_BACKEND, backend_class

    name = backend or DEFAULT_BACKEND
    if keyword not in inspect.signature(backend_class(name)).parameters:
        raise click.UsageError(f"{flag} is not a setting of the {name} backend; expected a --backend that takes it "
                               f"(leave --backend at its default, {DEFAULT_BACKEND})")


def backend_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop --backend and the backend options out of a command's keyword arguments, as Engine keywords."""
    from ..backends import backend_options

    from ..autoselect import AUTO

    given = {name: kwargs.pop(name, None) for name in backend_options()}
    backend = kwargs.pop("backend", None)
    settings = engine_backend(backend, **given)
    if kwargs.pop("retune", False):
        if backend != AUTO:
            raise click.UsageError(f"--retune re-measures the choice of --backend auto; with --backend {backend} "
                                   "there is nothing to measure")
        settings["retune"] = True
    return settings


def print_auto_choice(engine: Any) -> None:
    """The configuration --backend auto chose and the figures behind it, on stderr (stdout stays data)."""
    if getattr(engine, "auto_choice", None) is not None:
        click.echo(engine.auto_choice.line(), err=True)
