"""`hubtune space deploy OWNER/NAME`: put the app on a Hugging Face Space.

Creates (or updates) a Gradio Space repo, uploads space/ (app.py, README.md with the Spaces front matter,
requirements.txt) with a wheel of this exact hubtune under wheels/ (built from the source checkout, or
given with --wheel), requests the hardware, and returns the Space's URL. Uploads go in one commit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubtune.errors import HubtuneError, PushError

_CHECKOUT = Path(__file__).resolve().parents[2]
SPACE_FILES = ("app.py", "README.md", "requirements.txt")


@dataclass(frozen=True)
class Deployment:
    repo_id: str
    url: str  # the Space's page on the Hub
    commit_sha: str
    files: list[str]
    hardware: str | None  # what was requested
    hardware_note: str  # the Hub's answer to the hardware request, in words


def space_folder() -> Path:
    """space/ of a source checkout, or hubtune/space inside an installed wheel."""
    for folder in (_CHECKOUT / "space", Path(__file__).resolve().parents[1] / "space"):
        if (folder / "app.py").is_file():
            return folder
    raise HubtuneError("the Space files (space/app.py) are missing; reinstall hubtune")


def build_wheel(out: Path) -> Path:
    """A wheel of this hubtune, built from its source checkout."""
    if not (_CHECKOUT / "pyproject.toml").is_file():
        raise HubtuneError("hubtune is not running from a source checkout, so no wheel can be built: pass one with "
                           "--wheel PATH (e.g. from `pip wheel --no-deps hubtune-src/`)")
    with tempfile.TemporaryDirectory(prefix="hubtune-src-") as tmp:
        # Build from a copy, so the checkout gets no build/ or egg-info.
        src = Path(tmp) / "src"
        shutil.copytree(_CHECKOUT, src, ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                               "-w", str(out), str(src)], capture_output=True, text=True)
    wheels = sorted(out.glob("hubtune-*.whl"))
    if done.returncode != 0 or not wheels:
        raise HubtuneError(f"building the hubtune wheel failed: {done.stderr.strip()[-800:]}")
    return wheels[-1]


def deploy(repo_id: str, hardware: str | None = "l4x1", private: bool = False, token: str | None = None,
           wheel: str | Path | None = None) -> Deployment:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from hubtune.hub import hub_url

    if repo_id.count("/") != 1:
        raise PushError(f"{repo_id!r}: give the Space as OWNER/NAME")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token is set: `hf auth login` or `export HF_TOKEN=hf_...` with a write token")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hubtune-space-") as tmp:
        staged = Path(tmp) / "space"
        staged.mkdir()
        for name in SPACE_FILES:
            shutil.copy2(space_folder() / name, staged / name)
        (staged / "wheels").mkdir()
        built = Path(wheel) if wheel else build_wheel(Path(tmp) / "dist")
        if not built.is_file():
            raise HubtuneError(f"--wheel {built}: no such file")
        shutil.copy2(built, staged / "wheels" / built.name)
        try:
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=staged,
                                     commit_message=f"hubtune Space ({built.name})")
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            raise PushError(f"the Hub refused the Space {repo_id} ({status}: {err.server_message or err}); check that "
                            f"the token may write to {repo_id.split('/')[0]}") from None
        files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    note = "no hardware requested (the Space runs on free CPU)"
    if hardware:
        try:
            runtime = api.request_space_hardware(repo_id, hardware)
            note = f"requested {runtime.requested_hardware or hardware}"
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            note = (f"the hardware request for {hardware} was refused ({status}: {err.server_message or err}); "
                    f"choose it in the Space's settings")
    return Deployment(repo_id, hub_url(repo_id, "space"), info.oid, files, hardware, note)
