"""``python -m sxtdask.cli``: the ``sxtdask`` command."""

import sys

from sxtdask.cli import main

if __name__ == "__main__":
    sys.exit(main())
