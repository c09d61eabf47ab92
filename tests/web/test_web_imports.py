import os
import subprocess
import sys
from pathlib import Path

import lmpref


def test_store_and_web_never_import_the_ml_stack():
    # A fresh interpreter: this test process may have torch loaded by other tests.
    code = (
        "import sys, lmpref.store, lmpref.web, lmpref.cli.web\n"
        "from lmpref.web import Settings, create_app\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    src = str(Path(next(iter(lmpref.__path__))).parent)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # numpy too: krippendorff (numpy) is imported only when the admin page computes alpha.
    assert out.stdout.strip() == ""
