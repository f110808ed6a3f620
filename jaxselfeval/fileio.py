"""All-or-nothing file writes: a kill leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path, text: str):
    """Write `text` to a temporary file of its own beside `path` (a unique name, so writers of
    one path never share it), fsync it, then rename it over `path`. The temporary is removed
    when the write fails."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
        try:  # O_EXCL: the name is ours alone; 0o666 & ~umask, as open() would create it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
