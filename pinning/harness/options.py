"""Command-line options generated from BenchConfig's fields (bench scripts and the CLI)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import Field
from typing import Any

from pinning.model.config import BenchConfig, default, flag, option, option_fields, parse_value
from pinning.model.names import InputError


def _parser_of(f: Field, what: str) -> Callable[[str], Any]:
    def parse(arg: str) -> Any:
        try:
            return parse_value(f.name, arg, what, text=True)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_config_options(parser: argparse.ArgumentParser | Any, *, skip: Iterable[str] = (),
                       required: Iterable[str] = (), defaults: dict[str, Any] | None = None,
                       choices: dict[str, tuple] | None = None, parse: bool = True) -> None:
    """Add a ``--<field>`` option for each BenchConfig field (but ``workload`` and ``skip``).

    Types, choices, help and defaults come from the field; ``required`` fields have no
    default, ``defaults``/``choices`` narrow a field for one command (e.g. the backings a
    command offers). With ``parse=False`` the values stay text and
    :func:`config_from_args` reads them, so that a bad value is one InputError line
    (for parsers whose own errors print a usage block, like pyperf's).
    """
    skip, required = set(skip), set(required)
    defaults, choices = defaults or {}, choices or {}
    for f in option_fields():
        if f.name in skip:
            continue
        opt = option(f)
        kw: dict[str, Any] = {"help": opt.help, "dest": f.name}
        if f.name in required:
            kw["required"] = True
        else:
            value = defaults.get(f.name, default(f.name))
            kw["default"] = value
            kw["help"] += f" (default: {'unlimited' if value is None else value})"
        if not parse:
            kw["metavar"] = opt.metavar or "|".join(choices.get(f.name) or opt.choices())
        elif opt.kind == "choice":
            kw["choices"] = choices.get(f.name) or opt.choices()
        else:
            kw["type"] = _parser_of(f, f.name.replace("_", " "))
            kw["metavar"] = opt.metavar
        parser.add_argument(flag(f.name), **kw)


def config_from_args(workload: str, args: argparse.Namespace, **override: Any) -> BenchConfig:
    """The BenchConfig of parsed options (fields not on the command line keep defaults;
    values left as text are read here: InputError)."""
    values = {}
    for f in option_fields():
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(value, str) and option(f).kind != "choice":
                value = parse_value(f.name, value, text=True)
            values[f.name] = value
    return BenchConfig(workload=workload, **{**values, **override})
