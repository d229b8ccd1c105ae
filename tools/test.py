"""Evaluate a checkpoint: ``python tools/test.py CONFIG [CHECKPOINT] [...]``, the same as
``densevit test`` (densevit/cli/test.py); tools/dist_test.sh runs it under torchrun."""
from densevit.cli.test import main, parse_args  # noqa: F401

if __name__ == '__main__':
    main()
