"""``densevit train`` and ``densevit test``: run the repository's tools/train.py and tools/test.py.

Their argument parsing and ``main`` still live in tools/ (they move here later); this module
loads the file's ``main`` and passes the arguments through unchanged.
"""
from __future__ import annotations

import runpy
import sys

from ._repo import repo_file


def _run_script(name: str, argv: list[str] | None, prog: str | None):
    path = repo_file('tools', f'{name}.py', subcommand=name)
    script_main = runpy.run_path(path)['main']
    saved = sys.argv[0]
    sys.argv[0] = prog or sys.argv[0]  # argparse names the program after sys.argv[0]
    try:
        return script_main(list(sys.argv[1:] if argv is None else argv))
    finally:
        sys.argv[0] = saved


def train_main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """``densevit train CONFIG [...]``: ``python tools/train.py CONFIG [...]``."""
    _run_script('train', argv, prog)


def test_main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``densevit test CONFIG [CHECKPOINT] [...]``: ``python tools/test.py ...``."""
    return _run_script('test', argv, prog)
