"""The `om` Typer application. Subcommands live in sibling modules and register here."""

from __future__ import annotations

import typer

from om import __version__

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


# Subcommand registration (one line per command module).


def main() -> None:
    app()


if __name__ == "__main__":
    main()
