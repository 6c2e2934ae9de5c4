"""The model options of the command line, declared once for every command that runs a model.

Each field of :class:`~dseval.backends.base.BackendOptions` becomes a ``--flag`` (its name with
dashes, its default, the help text in its metadata) of every command decorated with
:func:`model_options`; the command receives them as one ``options`` object. A knob added there
is therefore a flag of ``run``, ``niah``, ``generate`` and ``chat`` at once, with one default and
one check, and no command can drift from the others.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Annotated, Any, TypeVar, get_type_hints

import click
import typer
import typer.core

from dseval.backends.base import BackendOptions

F = TypeVar("F", bound=Callable[..., Any])


def model_options(**defaults: Any) -> Callable[[F], F]:
    """Decorator: add the model options to a typer command, which takes ``options:
    BackendOptions`` instead. ``defaults`` replaces a field's default for this command only
    (``niah``'s 128K-token prompts run fewer sequences at once)."""
    hints = get_type_hints(BackendOptions)
    declared = fields(BackendOptions)
    unknown = set(defaults) - {f.name for f in declared}
    if unknown:
        raise TypeError(f"not model options: {sorted(unknown)}")

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        added = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(f.name, f.default),
                annotation=Annotated[hints[f.name], typer.Option(help=f.metadata["help"], rich_help_panel="Model options")],
            )
            for f in declared
        ]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            options = BackendOptions(**{f.name: kwargs.pop(f.name) for f in declared})
            return func(*args, options=options, **kwargs)

        params = [*own, *added]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN", "path": "PATH", "Path": "PATH"}


def _type_in_words(self: typer.core.TyperArgument | typer.core.TyperOption, ctx: click.Context) -> str | None:
    """TEXT..., PATH: the words click prints, where typer prints ``<list[str]>``; flags name none."""
    if getattr(self, "metavar", None) is not None:
        return self.metavar
    if getattr(self, "is_flag", False):
        return None
    label = self.display_type(ctx).strip("<>")
    many = label.startswith("list[")
    label = label[5:-1] if many else label
    return _WORDS.get(label, label.upper()) + ("..." if many else "")


def print_argument_types_in_words() -> None:
    """Make ``--help`` name every parameter's type in words, as click does (issue 23): typer
    renders some as Python annotations (``<list[str]>``), which read as code to a user."""
    typer.core.TyperArgument.display_type_rich = _type_in_words  # type: ignore[method-assign]
    typer.core.TyperOption.display_type_rich = _type_in_words  # type: ignore[method-assign]
