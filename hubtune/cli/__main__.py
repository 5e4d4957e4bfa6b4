"""`python -m hubtune.cli ...`: the same as `hubtune ...`."""

import sys

from hubtune.cli import main

sys.exit(main())
