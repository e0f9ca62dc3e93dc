"""Files that appear whole or not at all (downloads, CLI results): write beside the target, then rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(dest: Path) -> tuple[int, Path]:
    """(open fd, path) of a new hidden temporary file in ``dest``'s folder (created if needed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    return fd, Path(name)


def publish(tmp: Path, dest: Path) -> None:
    """Give ``tmp`` ordinary permissions and atomically rename it to ``dest``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; ComfyUI may run as another user
    os.replace(tmp, dest)
