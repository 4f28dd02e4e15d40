"""Command-line flags generated from a config dataclass, so that each setting is declared once.

A field declared with :func:`setting` carries its help text and, where it has a closed set of
values, a function returning them (from the registry that owns them: ``nn.OPTIMIZERS``,
``nn.SCHEDULES``, the model registry...). :func:`add_config_flags` turns every such field
into ``--field-name`` (a bool into ``--name`` / ``--no-name``); :func:`config_changes` reads
back what was given. A flag left out changes nothing, so a ``--config`` file's values stand.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable

NONE = "none"  # on the command line: the value None (``--early-stopping none``)


def setting(default=dataclasses.MISSING, *, help: str, choices: Callable[[], typing.Iterable] | None = None,
            factory=dataclasses.MISSING, flag: bool = True, metavar: str | None = None):
    """A config field with its ``help``; ``choices()`` lists its values; ``flag=False``: set
    from a config file only (or by a flag written by hand)."""
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _scalar_type(hint) -> tuple[type | None, bool]:
    """(int / float / str / bool, whether None is allowed) of a type hint; None for others."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if args:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    return (hint if hint in (int, float, str, bool) else None), optional


def _parser(kind: type, optional: bool, choices) -> Callable[[str], object]:
    def parse(text: str):
        if optional and text.lower() == NONE:
            return None
        value = kind(text)
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(map(str, choices))}"
                                             + (f" or {NONE}" if optional else ""))
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that get a generated flag."""
    hints = typing.get_type_hints(cls)
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag") and _scalar_type(hints[f.name])[0]]


def add_config_flags(parser: argparse.ArgumentParser, cls, title: str | None = None) -> None:
    """One flag per :func:`flag_fields` field of ``cls``, its help and choices from the field;
    the default shown is the dataclass's."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or f"settings ({cls.__name__} fields; a --config file's "
                                                "values stand where a flag is left out)")
    for f in flag_fields(cls):
        kind, optional = _scalar_type(hints[f.name])
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata["help"] + (f" (default: {default})" if default not in (None, "") else "")
        if kind is bool:
            group.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
            continue
        choices = list(f.metadata["choices"]()) if f.metadata.get("choices") else None
        metavar = f.metadata.get("metavar") or ("{" + ",".join(map(str, choices + ([NONE] if optional else [])))
                                                + "}" if choices else None)
        group.add_argument(name, dest=f.name, type=_parser(kind, optional, choices), default=argparse.SUPPRESS,
                           metavar=metavar, help=help_text)


def config_changes(args: argparse.Namespace, cls) -> dict:
    """The generated flags that were given: ``{field: value}`` (None where ``none`` was)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in flag_fields(cls):
        if f.name not in vars(args):  # left out (the non-bool flags are absent unless given)
            continue
        value = getattr(args, f.name)
        if value is None and _scalar_type(hints[f.name])[0] is bool:  # a bool flag left out
            continue
        out[f.name] = value
    return out
