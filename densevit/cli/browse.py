"""``densevit browse CONFIG [--split train|val] [-n N] --out DIR``: not built yet."""
from .pending import not_built


def main(argv=None, prog=None) -> None:
    not_built('browse', 'densevit browse CONFIG [--split train|val] [-n N] --out DIR', argv)
