"""``python -m scope_hub.cli``."""

import sys

from scope_hub.cli import main

sys.exit(main())
