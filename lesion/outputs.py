"""Files lesion writes: output folders the user names (`out=`), checked before any work and written only inside;
and JSON records (plans, results, markers), each written atomically.

A file is written under a temporary name in its folder, then renamed over the
destination: a symlink already there is replaced, never written through, and
a crash never leaves half a PNG. A sub-folder that resolves outside the
output folder (a symlink) is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from PIL import Image

from lesion.errors import ConfigError, DataError


def check_out_dir(path: str | Path, name: str = "out") -> Path:
    """path, if it is a folder or can become one: no existing file on the way (the folder is not created)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.is_symlink() or part.exists():
            if not part.is_dir():
                what = "is an existing file" if part == path else f"is under {part}, an existing file"
                raise ConfigError(f"{name}={path} {what}, not a folder; pass a folder (created if missing)")
            break
    return path


def make_out_dir(path: str | Path, name: str = "out") -> Path:
    path = check_out_dir(path, name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{name}={path}: cannot create the folder ({err.strerror}); pass a folder you can write to") from None
    return path


def _refuse_outside(root: Path, folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != root and existing != existing.parent:
        existing = existing.parent
    if not existing.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{existing} leads to {existing.resolve()}, outside the output folder {root} "
                        "(a symlink?); remove it or pass another out folder")


def save_png_inside(root: Path, relative: str | Path, image: Image.Image) -> Path:
    """Write image as root/relative (a PNG), refusing to leave root through a symlinked sub-folder."""
    return save_inside(root, relative, lambda fh: image.save(fh, format="PNG"))


def save_text_inside(root: Path, relative: str | Path, text: str) -> Path:
    """Write text (UTF-8) as root/relative, as save_png_inside writes a PNG."""
    return save_inside(root, relative, lambda fh: fh.write(text.encode()))


def save_inside(root: Path, relative: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """write(fh) into a temporary file in root/relative's folder, then rename it over root/relative."""
    dest = root / relative
    _refuse_outside(root, dest.parent)  # before mkdir, which would create folders through a symlink
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{dest.parent}: cannot create the folder ({err.strerror}); remove what is in the way "
                        f"under {root}") from None
    _refuse_outside(root, dest.parent)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    try:
        # O_EXCL never opens an existing file or a symlink; mode 0o666 lets the umask decide, as open() would
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as fh:
            write(fh)
        os.replace(tmp, dest)  # replaces a symlink at dest itself, not the file it points to
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{dest}: cannot write it ({err.strerror}); check the output folder") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """data as indented JSON, written atomically (a temporary file renamed over path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return path
