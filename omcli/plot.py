"""`om plot RUN... [-o curves.png]`: learning curves of one or more training runs as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from omcli.common import user_errors


@user_errors("plot")
def plot_command(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run folders written by om train (overlaid, labelled by folder)."),
    output: Path = typer.Option(Path("curves.png"), "-o", "--output", help="PNG file to write."),
) -> None:
    """Draw train and validation bits/byte, learning rate and bytes/s against bytes seen."""
    from om.plot import plot_runs

    path = plot_runs(runs, output)
    print(path, flush=True)
