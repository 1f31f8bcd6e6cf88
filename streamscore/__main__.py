"""`python -m streamscore ...` runs the `streamscore` command."""

import sys

from streamscore.cli import main

sys.exit(main())
