"""The ``lana`` command line: the root group, lazy subcommands and one-line errors.

Every subcommand lives in a module that is imported only when that command runs (click's
lazy-loading pattern), so ``lana --help`` and ``lana solve --table`` never pay for torch.
``main()`` turns every ``LanaError`` into one line on stderr and a non-zero exit code;
usage errors (a mistyped command or option) print click's usage line and exit with 2;
``--debug`` (or ``LANA_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import click  # type names only: typer vendors its own click
import typer
from typer.core import TyperGroup

from lana.cli.report import console
from lana.errors import LanaError

# command -> the module that defines it (with ``@app.command``); the order is the order of --help
COMMANDS = {
    "demo": "lana.cli.pipeline",
    "distill": "lana.cli.pipeline",
    "solve": "lana.cli.solve",
    "finetune": "lana.cli.pipeline",
    "export": "lana.cli.pipeline",
    "show": "lana.cli.pipeline",
    "blocks": "lana.cli.pipeline",
    "ops": "lana.cli.pipeline",
    "config": "lana.cli.pipeline",
    "profile": "lana.cli.latency",
    "latency-check": "lana.cli.latency",
    "proxy": "lana.cli.latency",
}
_HELP_ONLY = "lana.help_only"  # ctx.meta key: the group's help is being written
STATE = {"debug": os.environ.get("LANA_DEBUG") == "1"}
try:  # typer >= 0.2x vendors its own click, whose usage errors are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError

    USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError, _TyperUsageError)
except ImportError:
    USAGE_ERRORS = (click.UsageError,)


def _command_name(node: ast.FunctionDef) -> str | None:
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "attr", None) == "command":
            if deco.args and isinstance(deco.args[0], ast.Constant):
                return deco.args[0].value
            return node.name.replace("_", "-")
    return None


def short_help(module: str) -> dict[str, str]:
    """First docstring line of each command in ``module``, read from its source (not imported)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (name := _command_name(node)):
            found[name] = (ast.get_docstring(node) or "").split("\n")[0]
    return found


def all_short_helps() -> dict[str, str]:
    """The first docstring line of every command, read from the sources (nothing imported)."""
    helps: dict[str, str] = {}
    for module in dict.fromkeys(COMMANDS.values()):
        helps.update(short_help(module))
    return helps


class LazyGroup(TyperGroup):
    """A typer group whose subcommands are imported on first use.

    While the group's own help is written, commands are name-and-summary stand-ins read from
    the sources: typer's rich help asks for every command, and importing them all would
    import torch (the op zoo) and scipy just to print one line each.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        if ctx.meta.get(_HELP_ONLY):
            return typer.core.TyperCommand(name, help=all_short_helps().get(name, ""))
        group = typer.main.get_group(importlib.import_module(COMMANDS[name]).app)
        return group.get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USAGE_ERRORS as err:
            # click's parser raises some (e.g. "--budget requires an argument") without a
            # context, and an error without one prints no usage line: give it the command's
            if err.ctx is None and ctx.invoked_subcommand in COMMANDS:
                command = self.get_command(ctx, ctx.invoked_subcommand)
                err.ctx = type(ctx)(command, info_name=ctx.invoked_subcommand, parent=ctx)
                err.cmd = command
            raise
        except KeyboardInterrupt:  # before click turns it into "Aborted!" and exit code 1
            console(stderr=True).print("lana: interrupted; progress so far is saved in the run folder", markup=False)
            sys.exit(130)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx.meta[_HELP_ONLY] = True
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx.meta.pop(_HELP_ONLY, None)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        helps = all_short_helps()
        with formatter.section("Commands"):
            formatter.write_dl([(name, helps.get(name, "")) for name in COMMANDS])


app = typer.Typer(
    cls=LazyGroup,
    help="lana: latency-aware network acceleration. Replace a trained CNN's blocks with cheaper ops, "
    "chosen by an integer linear program under a latency budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    if debug:
        STATE["debug"] = True


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning known errors into one line and an exit code.

    Usage errors are click's own (standalone mode): the usage line, the problem, exit code 2.
    """
    # TorchScript is one of lana's export formats; torch >= 2.10 marks it deprecated on every call.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
    try:
        typer.main.get_command(app).main(args=argv, prog_name="lana", standalone_mode=True)
    except LanaError as exc:
        if STATE["debug"]:
            raise
        console(stderr=True).print(f"lana: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
