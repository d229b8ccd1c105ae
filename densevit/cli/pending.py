"""Subcommands registered but not built yet: ``infer``, ``browse`` and ``export``.

They exit with code 2 and say so, rather than pretend; ``--help`` shows what each will take.
"""
from __future__ import annotations

import sys

_PLANNED = {
    'infer': 'densevit infer CONFIG CHECKPOINT INPUT --out DIR: overlay PNGs and raw predictions '
             'for an image, a folder or a glob',
    'browse': 'densevit browse CONFIG [--split train|val] [-n N] --out DIR: dataset samples '
              'after the pipeline, beside the originals',
    'export': 'densevit export CONFIG CHECKPOINT --format onnx|torch-export --out FILE: an '
              'inference graph',
}


def _not_built(name: str, argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ('-h', '--help') for arg in argv):
        print(f'usage: {_PLANNED[name]}\n\nnot built yet in this version of densevit.')
        raise SystemExit(0)
    print(f'densevit {name}: not built yet in this version of densevit', file=sys.stderr)
    raise SystemExit(2)


def infer_main(argv: list[str] | None = None, prog: str | None = None) -> None:
    _not_built('infer', argv)


def browse_main(argv: list[str] | None = None, prog: str | None = None) -> None:
    _not_built('browse', argv)


def export_main(argv: list[str] | None = None, prog: str | None = None) -> None:
    _not_built('export', argv)
