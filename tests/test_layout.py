"""The layout's rules hold on the real import graph: the import-linter contracts in pyproject.toml
are kept, a forbidden import breaks them, and no module imports itself through others."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
]


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts, on the package found under `tree/src`."""
    return subprocess.run(
        LINT_IMPORTS + ["--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
    )


def test_the_contracts_are_kept():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 6 kept, 0 broken." in out.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("core/models.py", "from lmpref.steps import train", "lmpref.core is not allowed to import lmpref.steps"),
        ("tasks/books.py", "import lmpref.eval.metrics", "lmpref.tasks is not allowed to import lmpref.eval"),
        ("store/db.py", "import torch", "lmpref.store is not allowed to import torch"),
        ("web/views.py", "from lmpref.core import trunk", "lmpref.web is not allowed to import lmpref.core"),
        ("io.py", "from lmpref import store", "lmpref.io is not allowed to import lmpref.store"),
        ("formats/preferences.py", "import torch", "lmpref.formats is not allowed to import torch"),
        (
            "formats/preferences.py",
            "from lmpref.core import reward",
            "lmpref.formats is not allowed to import lmpref.core",
        ),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(
        ROOT / "src" / "lmpref", tmp_path / "src" / "lmpref", ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    path = tmp_path / "src" / "lmpref" / module
    path.write_text(path.read_text() + f"\n{line}  # the forbidden import\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert broken in out.stdout, out.stdout


def import_loops(graph: grimp.ImportGraph, package: str) -> list[tuple[str, ...]]:
    """Each direct import a -> b of the package for which b leads back to a, as the ring a, b, ..., a."""
    loops = []
    for a in sorted(graph.modules):
        for b in graph.find_modules_directly_imported_by(a):
            if b.split(".")[0] == package and (chain := graph.find_shortest_chain(importer=b, imported=a)):
                loops.append((a,) + chain)
    return loops


def test_no_import_loops():
    """No module reaches itself through the modules it imports (lazy imports inside functions count)."""
    assert import_loops(grimp.build_graph("lmpref"), "lmpref") == []


def test_an_import_loop_is_found():
    """The same finder on a package whose modules import each other in a ring."""
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d"):
        graph.add_module(m)
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")):
        graph.add_import(importer=a, imported=b)
    assert import_loops(graph, "p") == [
        ("p.a", "p.b", "p.c", "p.a"),
        ("p.b", "p.c", "p.a", "p.b"),
        ("p.c", "p.a", "p.b", "p.c"),
    ]
