"""Write the model zoo page from the configs: ``python tools/make_zoo.py [--out
docs/model_zoo.md] [--check] [--no-flops]``, the same as ``densevit zoo`` (densevit/cli/zoo.py)."""
from densevit.cli.zoo import main  # noqa: F401  (this script's interface)

if __name__ == '__main__':
    main()
