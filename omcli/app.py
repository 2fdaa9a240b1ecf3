"""The `om` Typer application. Subcommands live in sibling modules and register here."""

from __future__ import annotations

import sys

import typer

try:  # typer vendors click from 0.2x on; older releases use click itself
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click import UsageError

from om import __version__
from omcli import cache as _cache
from omcli import compress as _compress
from omcli import eval as _eval
from omcli import plot as _plot
from omcli import prepare as _prepare
from omcli import sample as _sample
from omcli import train as _train
from omcli.common import OmCommand

app = typer.Typer(
    name="om",
    help="Om: tokenizer-free byte-level language modeling with Attentive Recurrent Cells.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"om {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Om: tokenizer-free byte-level language modeling with Attentive Recurrent Cells."""


# Subcommands, in the order `om --help` lists them. Their modules import torch, numpy and the model
# only inside the command functions, so `om --help` and usage errors stay fast.
for _name, _command in [
    ("prepare", _prepare.prepare),
    ("eval", _eval.eval_command),
    ("sample", _sample.sample_command),
    ("cache", _cache.cache_command),
    ("compress", _compress.compress_command),
    ("decompress", _compress.decompress_command),
    ("train", _train.train),
    ("plot", _plot.plot_command),
]:
    app.command(_name, cls=OmCommand)(_command)


def main() -> None:
    """Run the app; usage errors (a flag's value of the wrong type, an unknown option) become one
    line on stderr with exit code 2, like every other bad input. A closed stdout pipe (`om ... |
    head -c 1`) ends the program quietly with exit code 0."""
    try:
        code = app(standalone_mode=False)
        sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is caught below
    except BrokenPipeError:
        from omcli.common import silence_stdout

        silence_stdout()
        sys.exit(0)
    except UsageError as err:
        message = " ".join(err.format_message().split())
        if message:  # empty when the help was shown for a bare `om`
            where = err.ctx.command_path if err.ctx is not None else "om"
            print(f"{where}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
