"""`python -m lmpref.cli ...` (how `torchrun` and `accelerate launch` start the command)."""

import sys

from lmpref.cli.main import main

sys.exit(main())
