"""The hubtune Space: the app of `hubtune ui`, signed in with Hugging Face.

`hubtune space deploy` uploads this exact hubtune as a wheel under wheels/; the dependencies it needs are
pinned in requirements.txt. Runs live under HUBTUNE_HOME (set it to a mounted volume to keep them).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("hubtune") is None:
    wheels = sorted(Path(__file__).parent.glob("wheels/hubtune-*.whl"))
    if not wheels:
        sys.exit("hubtune is not installed and no wheels/hubtune-*.whl was uploaded: deploy with `hubtune space deploy`")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", str(wheels[-1])])

from hubtune.ui import launch  # noqa: E402

launch()
