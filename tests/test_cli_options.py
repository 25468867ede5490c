"""Command-line options generated from config dataclasses: one source of defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import typer
from typer.testing import CliRunner

from scfm.cli_options import build_config, config_command, option

runner = CliRunner()


@dataclass
class Inner:
    depth: int = option(3, "Depth.")
    ratio: float | None = option(None, "A ratio.", flags=("--ratio", "-r"))


@dataclass
class Job:
    out: str = option(help="Output.", flags=("--out", "-o"))
    parts: tuple[str, ...] = option(
        ("a", "b"), "Parts.", cli_type=str, parse=lambda t: tuple(str(t).split(","))
    )
    inner: Inner = field(default_factory=Inner)
    fast: bool = option(True, "Go fast.")
    hidden: dict = field(default_factory=dict)


def _app(**kw) -> tuple[typer.Typer, list]:
    seen: list = []

    def run(options: dict, name: str = "x") -> None:
        """Run the job."""
        seen.append((name, options))

    app = typer.Typer()
    app.command()(config_command(run, Job, skip={"hidden"}, **kw))
    return app, seen


def test_defaults_come_from_the_dataclass_and_options_build_it() -> None:
    app, seen = _app()
    assert runner.invoke(app, ["-o", "dir"]).exit_code == 0
    name, options = seen[-1]
    cfg = build_config(Job, options)
    assert cfg == Job(out="dir")  # every default is the dataclass's own
    assert runner.invoke(app, ["-o", "d", "--depth", "5", "-r", "0.5", "--parts", "x,y",
                               "--no-fast", "--name", "n"]).exit_code == 0  # fmt: skip
    name, options = seen[-1]
    assert name == "n"
    cfg = build_config(Job, options, hidden={"k": 1})
    assert cfg == Job("d", ("x", "y"), Inner(5, 0.5), False, {"k": 1})
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for flag in ("--out", "--parts", "--depth", "--ratio", "--fast", "--no-fast", "--name"):
        assert flag in help_text
    assert "--hidden" not in help_text and "Go fast." in help_text and "(default: a,b)" in help_text
    assert runner.invoke(app, []).exit_code == 2  # --out is required


def test_dotted_options_given_only() -> None:
    app, seen = _app(dotted=True, only_given=True)
    assert runner.invoke(app, ["--inner.depth", "7"]).exit_code == 0
    assert seen[-1][1] == {"inner": {"depth": 7}}  # nothing else: layered over a config file
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--inner.depth" in help_text and "(default: 3)" in help_text


def test_the_real_commands_show_every_config_field() -> None:
    from scfm.cli import app
    from scfm.corpus.build import BuildConfig

    help_text = runner.invoke(app, ["corpus", "build", "--help"], env={"COLUMNS": "250"}).output
    for f in dataclasses.fields(BuildConfig):
        if f.name in ("sources", "refresh", "qc"):
            continue
        flag = f.metadata["cli"].get("flags") or (f"--{f.name.replace('_', '-')}",)
        assert flag[0].split("/")[0] in help_text, f.name
    assert "[default: 20000]" in help_text  # BuildConfig.block_cells
    pretrain = runner.invoke(app, ["pretrain", "--help"], env={"COLUMNS": "250"}).output
    assert "--train.lr" in pretrain and "--scale.num-workers" in pretrain
