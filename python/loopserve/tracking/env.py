"""What a run records about where it ran: code version, Python, platform, packages."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from loopserve.tracking.records import CodeVersion

KEY_PACKAGES = ("loopserve", "numpy", "torch", "onnxruntime", "onnx", "msgspec", "pyarrow",
                "pandas", "scikit-learn", "triton")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version(cwd: str | os.PathLike | None = None) -> CodeVersion:
    """The git commit of the repository holding `cwd` (default: the working directory).

    Dirty means tracked files differ from the commit; untracked files (a store directory, data
    files) are not counted. All None when `cwd` is not in a git work tree or git is missing.
    """
    where = Path(cwd or os.getcwd())
    sha = _git(where, "rev-parse", "--verify", "HEAD")
    if not sha:
        return CodeVersion()
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    root = _git(where, "rev-parse", "--show-toplevel")
    return CodeVersion(git_sha=sha, git_dirty=None if status is None else bool(status), git_root=root)


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of the key packages (absent ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def platform_string() -> str:
    return platform.platform()


def command_line() -> list[str]:
    return [sys.executable, *sys.argv]
