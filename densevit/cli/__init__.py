"""The ``densevit`` command: ``densevit SUBCOMMAND [ARGS]`` (also ``python -m densevit``).

Each subcommand is the ``main(argv, prog)`` function of one module of this package; tools/*.py
call the same functions, so ``python tools/X.py`` and ``densevit X`` behave alike. Here a failure
becomes one line naming the file, key or name at fault and a non-zero exit code; ``--debug``
(anywhere on the line) shows the traceback instead.
"""
from __future__ import annotations

import sys

__all__ = ['main', 'SUBCOMMANDS', 'CLIError']


class CLIError(Exception):
    """A user error the command reports as one line (no traceback)."""


# name -> (module of this package whose ``main(argv, prog)`` runs it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'train': ('train', 'train a model from a config'),
    'test': ('test', 'evaluate a checkpoint on a config\'s test set'),
    'infer': ('infer', 'predict on images: overlay PNGs and raw predictions'),
    'browse': ('browse', 'draw dataset samples after the pipeline, beside the originals'),
    'plot': ('plot', 'plot losses, lr and validation metrics of a work dir'),
    'list-models': ('registry', 'list registered backbones, necks, heads, models, datasets, '
                    'transforms, metrics'),
    'info': ('info', 'parameters, FLOPs, feature maps and expected weights of a config'),
    'convert': ('convert', 'convert an official checkpoint to densevit\'s keys'),
    'make-synthetic': ('synthetic', 'write the synthetic COCO / ADE20K stand-in sets'),
    'benchmark': ('benchmark', 'measure densevit against reference implementations'),
    'export': ('export', 'export an inference graph (ONNX or torch.export)'),
    'zoo': ('zoo', 'write the model zoo page from the configs'),
}


def _subcommand_main(name: str):
    """The ``main`` of ``name``'s module, imported only now (each module imports its heavy
    libraries lazily, so ``densevit --help`` stays fast)."""
    import importlib
    return importlib.import_module(f'{__name__}.{SUBCOMMANDS[name][0]}').main


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ['usage: densevit [--debug] SUBCOMMAND [ARGS]  (densevit SUBCOMMAND --help for its '
             'arguments)', '', 'subcommands:']
    lines += [f'  {name:<{width}}  {text}' for name, (_, text) in SUBCOMMANDS.items()]
    lines += ['', 'options:', '  -h, --help  show this message', '  --version   show the version',
              '  --debug     show the traceback of an error instead of one line']
    return '\n'.join(lines)


def error_line(exc: BaseException) -> str:
    """One line for an exception: its message, without Python's quoting or errno prefixes."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f'{exc.filename}: {exc.strerror}'
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``densevit`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in argv
    argv = [arg for arg in argv if arg != '--debug']
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0 if argv else 2
    if argv[0] == '--version':
        from densevit import __version__
        print(f'densevit {__version__}')
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        import difflib
        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f'did you mean {close[0]!r}?' if close else f'choose from {", ".join(SUBCOMMANDS)}'
        print(f'densevit: unknown subcommand {name!r}; {hint}', file=sys.stderr)
        return 2
    try:
        _subcommand_main(name)(rest, prog=f'densevit {name}')
    except SystemExit as exc:  # argparse's usage errors (2), --help (0), explicit exits
        if isinstance(exc.code, str):
            print(f'densevit {name}: error: {exc.code}', file=sys.stderr)
            return 1
        return exc.code or 0
    except BrokenPipeError:  # the reader went away (densevit list-models | head)
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f'densevit {name}: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (one line per error, by design; --debug for more)
        if debug:
            raise
        print(f'densevit {name}: error: {error_line(exc)}', file=sys.stderr)
        return 1
    return 0
