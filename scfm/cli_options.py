"""Command-line options generated from config dataclasses: one source of defaults and help.

A config dataclass describes its fields once, with :func:`option` (default + help text + how the
command line spells it); :func:`config_command` turns a function that takes the built config into
a typer command whose options are those fields. Nested dataclasses become their fields (flat, or
``--section.field`` with ``dotted=True``, as litgpt's CLI does over its dataclasses).

    @dataclass
    class JobConfig:
        output: str = option(..., "Output folder.", flags=("--output", "-o"))
        block_cells: int = option(20_000, "Cells per work unit.")

    def run_job(options: dict) -> None:
        cfg = build_config(JobConfig, options, sources=...)

    command = config_command(run_job, JobConfig, skip={"sources"})

Defaults live only in the dataclass: the command shows them and the config keeps them unless an
option is given.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from typing import Annotated, Any

import typer


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flags: tuple[str, ...] | None = None,
    argument: bool = False,
    cli_type: Any = None,
    parse: Callable[[Any], Any] | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field that knows its command-line option.

    Parameters
    ----------
    flags
        Option names (default ``--field-name``).
    argument
        A positional argument instead of an option.
    cli_type, parse
        For fields whose type the command line cannot spell (a tuple, a dict): the type typer
        parses, and the function that turns it into the field's value.
    """
    meta = {
        "help": help,
        "flags": flags,
        "argument": argument,
        "cli_type": cli_type,
        "parse": parse,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"cli": meta})
    return dataclasses.field(default=default, metadata={"cli": meta})


@dataclass(frozen=True)
class _Spec:
    path: tuple[str, ...]  # attribute path in the config (nested dataclasses)
    name: str  # python parameter name
    annotation: Any
    default: Any
    parse: Callable[[Any], Any] | None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _specs(
    cls: type, prefix: tuple[str, ...], skip: set[str], dotted: bool, show_default: bool = False
) -> list[_Spec]:
    hints = typing.get_type_hints(cls)
    out: list[_Spec] = []
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        dotted_name = ".".join(path)
        if f.name in skip or dotted_name in skip or not f.init:
            continue
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            out.extend(_specs(ftype, path, skip, dotted, show_default))
            continue
        meta = f.metadata.get("cli", {})
        flag_name = dotted_name.replace("_", "-") if dotted else f.name.replace("_", "-")
        flags = meta.get("flags") or (
            (f"--{flag_name}/--no-{flag_name}",) if ftype is bool else (f"--{flag_name}",)
        )
        default = _default(f)
        cli_type = meta.get("cli_type") or ftype
        help_text = meta.get("help", "")
        parse = meta.get("parse")
        if (show_default or parse) and default is not MISSING:  # the option's default is None
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        if meta.get("argument"):
            info = typer.Argument(help=help_text, show_default=default is not MISSING)
        else:
            info = typer.Option(*flags, help=help_text)
        out.append(_Spec(path, "__".join(path), Annotated[cli_type, info], default, parse))
    return out


def _set(target: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def build_config(cls: type, options: dict[str, Any], **fields: Any) -> Any:
    """An instance of ``cls`` from a nested dict of option values plus explicit ``fields``."""
    hints = typing.get_type_hints(cls)
    kwargs = dict(fields)
    for f in dataclasses.fields(cls):
        if f.name not in options or f.name in fields:
            continue
        v = options[f.name]
        kwargs[f.name] = (
            build_config(hints[f.name], v) if dataclasses.is_dataclass(hints[f.name]) else v
        )
    return cls(**kwargs)


def config_command(
    run: Callable[..., Any],
    cls: type,
    *,
    skip: Iterable[str] = (),
    dotted: bool = False,
    only_given: bool = False,
    doc: str | None = None,
) -> Callable[..., Any]:
    """A typer command: ``run``'s own parameters plus one option per field of ``cls``.

    ``run`` receives its own arguments and ``options=``: a nested dict of the option values
    (build the config with :func:`build_config`, adding the skipped fields). With
    ``only_given=True`` it holds only the options given on the command line (the others show the
    dataclass default but are not applied), for layering over a config file.
    """
    specs = _specs(cls, (), set(skip), dotted, show_default=only_given)
    own = list(inspect.signature(run, eval_str=True).parameters.values())
    own = [p for p in own if p.name != "options"]
    params = list(own)
    for s in specs:
        # None = not given: the dataclass default applies (shown in the help text)
        given_only = only_given or (s.parse is not None and s.default is not MISSING)
        default = None if given_only else s.default
        if default is MISSING:
            default = inspect.Parameter.empty
        params.append(
            inspect.Parameter(
                s.name, inspect.Parameter.KEYWORD_ONLY, annotation=s.annotation, default=default
            )
        )
    # typer wants positional-or-keyword order: required ones first
    required = [p for p in params if p.default is inspect.Parameter.empty]
    optional = [p for p in params if p.default is not inspect.Parameter.empty]
    params = [
        p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in (*required, *optional)
    ]
    own_names = {p.name for p in own}

    def command(**kwargs: Any) -> Any:
        values: dict[str, Any] = {}
        for s in specs:
            v = kwargs.pop(s.name)
            if v is None and (only_given or s.parse is not None):
                continue
            _set(values, s.path, s.parse(v) if s.parse else v)
        own_kwargs = {k: v for k, v in kwargs.items() if k in own_names}
        return run(**own_kwargs, options=values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc if doc is not None else run.__doc__
    command.__name__ = run.__name__
    return command
