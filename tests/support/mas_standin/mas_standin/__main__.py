"""Entry point of the `mas-cli` zipapp (see mas_standin/__init__.py: a test double, not MAS)."""

import sys

from mas_standin.cli import main

sys.exit(main())
