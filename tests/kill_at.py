"""Run the `lmpref` command and die as `kill -9` would at one named point of the run (see
`lmpref.steps.hooks`): `python tests/kill_at.py POINT:N -- ARGS...`; an empty POINT:N never dies."""

import os
import signal
import sys

from lmpref.cli import main
from lmpref.steps import hooks

target, argv = sys.argv[1], sys.argv[3:]
if target:
    hooks.register(lambda name, n: os.kill(os.getpid(), signal.SIGKILL) if f"{name}:{n}" == target else None)
sys.exit(main(argv))
