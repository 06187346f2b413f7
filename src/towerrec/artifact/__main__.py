"""`python -m towerrec.artifact`: the artifact command line (towerrec.artifact.cli)."""

import sys

from towerrec.artifact.cli import main

sys.exit(main())
