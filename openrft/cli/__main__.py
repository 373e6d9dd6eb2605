"""`python -m openrft.cli ...`: the job server's workers and the tests start the CLI this way."""

import sys

from openrft.cli import main

sys.exit(main())
