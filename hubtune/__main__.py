"""`python -m hubtune ...` and `accelerate launch -m hubtune train CONFIG`: the same CLI as `hubtune`."""

import sys

from hubtune.cli import main

sys.exit(main())
