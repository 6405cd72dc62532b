"""``python -m release_coordinator``: the command line."""

import sys

from release_coordinator.cli import main

sys.exit(main())
