"""Where the densevit repository is, for the subcommands that run its tools/ folder.

densevit itself never imports tools/ (DESIGN.md); ``densevit benchmark`` runs files of the
repository the package was installed from (an editable install or a clone on ``PYTHONPATH``) and
says so plainly when the package was installed without it.
"""
from __future__ import annotations

import os.path as osp

from . import CLIError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def repo_file(*parts: str, subcommand: str) -> str:
    """Path of ``parts`` under the repository root; a CLIError naming it when it is absent."""
    path = osp.join(REPO, *parts)
    if not osp.exists(path):
        raise CLIError(f'densevit {subcommand} runs the repository\'s {"/".join(parts)}, which '
                       f'is not at {path}: this densevit is installed without its repository '
                       '(install it from a clone with pip install -e .)')
    return path
