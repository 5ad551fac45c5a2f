"""``python -m tritium`` = the ``tritium`` command."""

import sys

from tritium.cli import main

sys.exit(main())
