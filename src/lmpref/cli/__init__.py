"""The `lmpref` command: argument parsing and the one-line error path (`main`); `web.py` adds the
labeling app's commands. The only room that imports every other room."""

from lmpref.cli.main import main

__all__ = ["main"]
