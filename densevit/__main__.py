"""``python -m densevit SUBCOMMAND ...``: the ``densevit`` command."""
import sys

from densevit.cli import main

sys.exit(main())
