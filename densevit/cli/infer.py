"""``densevit infer CONFIG CHECKPOINT INPUT --out DIR``: not built yet."""
from .pending import not_built


def main(argv=None, prog=None) -> None:
    not_built('infer', 'densevit infer CONFIG CHECKPOINT INPUT --out DIR', argv)
