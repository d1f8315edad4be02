"""``python -m trainers CONFIG.yaml key=value ...`` (see :mod:`trainers.cli`)."""

import sys

from trainers.cli import main

if __name__ == "__main__":
    sys.exit(main())
