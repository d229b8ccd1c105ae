"""For subcommands registered before they are built: exit with code 2 and say so, rather than
pretend; ``--help`` shows what the subcommand will take."""
from __future__ import annotations

import sys


def not_built(name: str, usage: str, argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ('-h', '--help') for arg in argv):
        print(f'usage: {usage}\n\nnot built yet in this version of densevit.')
        raise SystemExit(0)
    print(f'densevit {name}: not built yet in this version of densevit', file=sys.stderr)
    raise SystemExit(2)
