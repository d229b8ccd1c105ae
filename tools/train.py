"""Train a model from a config: ``python tools/train.py CONFIG [...]``, the same as
``densevit train`` (densevit/cli/train.py); tools/dist_train.sh runs it under torchrun."""
from densevit.cli.train import main, parse_args  # noqa: F401

if __name__ == '__main__':
    main()
