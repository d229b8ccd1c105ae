"""``densevit zoo [--out docs/model_zoo.md]``: not built yet."""
from .pending import not_built


def main(argv=None, prog=None) -> None:
    not_built('zoo', 'densevit zoo [--out docs/model_zoo.md]', argv)
