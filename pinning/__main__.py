"""``python -m pinning`` runs the ``pinbench`` command line."""

import sys

from pinning.cli import main

sys.exit(main())
