"""Measure densevit against the reference implementations, in one run, as ratios:
``python tools/benchmark.py [TOPIC ...] [--quick] [--out BENCHMARKS.json]``.

Topics live in tools/benchmarks/ (one module each with ``run(quick) -> list[dict]``). Same as
``densevit benchmark``; the code is densevit.cli.benchmark.
"""
from densevit.cli.benchmark import TOPICS, main, print_table  # noqa: F401

if __name__ == '__main__':
    main()
