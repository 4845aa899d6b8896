"""The options every command that runs a model shares: which backend executes the bundle's model,
and the settings backends declare. Both come from the backend registry, so a new backend (or a
registered plugin) appears here without an edit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click


class BackendChoice(click.Choice):
    """The selectable backends, read from the registry when the command line is parsed (so a backend
    registered after this module was imported is offered too)."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        from ..backends import selectable_backends

        return selectable_backends()

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        pass  # click.Choice assigns its list in __init__; ours is always the registry's


def backend_option_decorators() -> list[Callable[..., Any]]:
    """One ``--flag`` per option the registered backends declare (e.g. openvino's --execution-precision)."""
    from ..backends import backend_options

    return [click.option(option.flag, option.name, type=click.Choice(list(option.choices)), default=None,
                         help=option.help) for option, _ in backend_options().values()]


def runtime_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --backend and each backend option (passed on as ``backend`` and the option's name)."""
    for decorator in backend_option_decorators():
        function = decorator(function)
    return click.option(
        "--backend", type=BackendChoice(), default=None,
        help="Runtime that executes the bundle's model (default: ONNX Runtime for ONNX models; openvino: pip install "
             "'edge-thyroid[openvino]'). TensorRT engines in a bundle are picked by --model.")(function)


def engine_backend(backend: str | None, **given: str | None) -> dict[str, Any]:
    """Engine keyword arguments for the chosen backend; an option the backend does not take is an error."""
    from ..backends import DEFAULT_BACKEND, backend_options

    options: dict[str, Any] = {"backend": backend}
    declared = backend_options()
    for name, value in given.items():
        if value is None:
            continue
        option, owners = declared[name]
        if (backend or DEFAULT_BACKEND) not in owners:
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

    given = {name: kwargs.pop(name, None) for name in backend_options()}
    return engine_backend(kwargs.pop("backend", None), **given)
