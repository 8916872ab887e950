"""Progress bars on stderr, so stdout carries only results (answers, tables) and can be piped."""

from rich.console import Console
from rich.progress import Progress


def progress_bar() -> Progress:
    return Progress(console=Console(stderr=True), transient=True)
