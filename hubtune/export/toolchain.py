"""llama.cpp for export: its converters and its runtime, from one pinned release, paid for once per machine.

Both come from the llama-cpp-python source release LLAMA_CPP_PYTHON, which vendors ggml-org/llama.cpp at
LLAMA_CPP_COMMIT: the Python converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py and their gguf-py)
are unpacked from it, and its Python binding, which compiles llama.cpp, is built from it into a wheel.
Everything lives in the hubtune cache (HUBTUNE_CACHE, default ~/.cache/hubtune), outside any clone:

    llama.cpp-<commit>/        the converters, unpacked once
    downloads/                 the source release, fetched once through pip (its index, proxy and cache)
    wheels/<cpu>/              the binding's wheel, built once for this CPU (llama.cpp is compiled with
                               -march=native), installed into any venv in seconds

    python -m hubtune.export.toolchain install     # build (first time) and install the binding
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from hubtune.errors import ExportError

LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"  # ggml-org/llama.cpp, vendored by that release
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
# Only the library the binding loads: no multimodal library, tools, server, tests or examples.
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON")
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
INSTALL_HINT = ("`python -m hubtune.export.toolchain install` builds llama.cpp's Python binding once per machine "
                "(4 minutes of wall time and 7 of CPU on 2 idle cores, see docs/export.md) and installs it; or "
                "`pip install 'hubtune[gguf]'`")


def cache_dir() -> Path:
    return Path(os.environ.get("HUBTUNE_CACHE") or Path.home() / ".cache" / "hubtune")


def _lock(name: str):
    from filelock import FileLock

    cache_dir().mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache_dir() / f".{name}.lock"))


def sdist() -> Path:
    """The pinned source release, downloaded once through pip."""
    folder = cache_dir() / "downloads"
    path = folder / SDIST
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
           f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(folder), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        raise ExportError(f"could not download llama-cpp-python {LLAMA_CPP_PYTHON}'s source release through pip "
                          f"(it carries llama.cpp's converters): {done.stderr.strip()[-500:]}. Check that pip "
                          f"reaches its package index, or put {SDIST} into {folder}")
    return path


def converter_dir() -> Path:
    """The folder holding llama.cpp's converters (convert_hf_to_gguf.py and what it imports)."""
    folder = cache_dir() / f"llama.cpp-{LLAMA_CPP_COMMIT[:9]}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    with _lock("converter"):
        if (folder / "convert_hf_to_gguf.py").is_file():
            return folder
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(sdist()) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                       and any(m.name[len(prefix):].startswith(f) for f in CONVERTER_FILES)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        staging.rename(folder)
    return folder


def cpu_key() -> str:
    """A short key for this CPU's instruction sets: a -march=native build runs only where they match."""
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    import platform

    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def wheel() -> Path:
    """The binding's wheel for this CPU: built the first time (the long step), found in the cache after."""
    folder = cache_dir() / "wheels" / cpu_key()
    found = sorted(folder.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"))
    if found:
        return found[0]
    with _lock("wheel"):
        found = sorted(folder.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"))
        if found:
            return found[0]
        source = sdist()
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS,
               "CMAKE_BUILD_PARALLEL_LEVEL": str(len(os.sched_getaffinity(0)))}
        started = time.time()
        print(f"building llama.cpp {LLAMA_CPP_COMMIT[:9]} (llama-cpp-python {LLAMA_CPP_PYTHON}) into {folder}: "
              f"once per machine", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(source), "-w", str(folder)],
                              env=env, capture_output=True, text=True)
        found = sorted(folder.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"))
        if done.returncode != 0 or not found:
            raise ExportError(f"building llama.cpp failed (a C/C++ compiler and cmake are needed): "
                              f"{(done.stderr or done.stdout).strip()[-1500:]}")
        print(f"built in {time.time() - started:.0f} s: {found[0]}", file=sys.stderr, flush=True)
        return found[0]


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def install() -> None:
    """Install the binding into this Python from the cached wheel (building it first if needed)."""
    if installed_version() == LLAMA_CPP_PYTHON:
        return
    built = wheel()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(built)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"installing {built.name} failed: {done.stderr.strip()[-800:]}")


def llama_cpp():
    """The llama_cpp module, or an ExportError saying how to get it."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"running a GGUF file needs llama.cpp's Python binding (llama-cpp-python "
                          f"{LLAMA_CPP_PYTHON}), which is not installed: {INSTALL_HINT}").for_page(
            f"GGUF export needs llama.cpp's Python binding (llama-cpp-python {LLAMA_CPP_PYTHON}), which this "
            f"server does not have: whoever runs the app installs it once, with `python -m "
            f"hubtune.export.toolchain install` (it compiles llama.cpp: 4 minutes on 2 idle cores). Merging "
            f"into the base works without it.") from None
    return llama_cpp


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install"]:
        install()
        converter_dir()
        print(f"llama-cpp-python {installed_version()} installed; converters in {converter_dir()}")
        return 0
    if argv[:1] == ["wheel"]:
        print(wheel())
        return 0
    print("usage: python -m hubtune.export.toolchain install | wheel", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
