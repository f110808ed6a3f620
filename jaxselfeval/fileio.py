"""All-or-nothing writes: a kill leaves the old file (or directory) or the new one, never half of
one, and never loses both."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from jaxselfeval.errors import JSEError


def temp_dir_beside(out: Path, prefix: str = ".tmp-") -> Path:
    """A fresh directory in `out`'s parent (made if needed) to build `out` in and rename into
    place: same disk, and the ordinary permissions of a new directory (0o777 less the umask;
    mkdtemp's own are private, and the result would stay so)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def write_atomic(path, text: str | bytes):
    """Write `text` (str or bytes) to a temporary file of its own beside `path` (a unique name,
    so writers of one path never share it), fsync it, then rename it over `path`. The temporary
    is removed when the write fails."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
        try:  # O_EXCL: the name is ours alone; 0o666 & ~umask, as open() would create it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_file_target(out, flag: str = "--out") -> None:
    """Before a long job: refuse (one-line JSEError) an output file path that cannot be written
    later, i.e. an existing directory, or a path below an existing file or an unwritable folder.
    Missing folders are fine: `write_file` makes them when the result is written."""
    out = Path(out)
    if out.is_dir():
        raise JSEError(f"{flag} '{out}' is a directory: give a file path, e.g. {out / 'bench.json'}")
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        raise JSEError(f"{flag} '{out}': '{anc}' is not a writable folder: choose another path")


def write_file(path, text: str) -> None:
    """`write_atomic`, first making the missing folders above `path`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def check_replaceable(out, ours, overwrite: bool = False) -> None:
    """Refuse (one-line JSEError) to replace `out` when something is there that `ours(out)` does
    not recognise as this kind of output, unless `overwrite`; nothing is touched. `ours(path)`
    -> None when `path` may be replaced, else what is wrong with it (a short phrase)."""
    out = Path(out)
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    why = ours(out)
    if why is not None:
        raise JSEError(f"'{out}' exists and {why}: write to another path, or pass overwrite=True "
                       f"(jaxselfeval convert --overwrite) to replace it")


def swap_dir(new, out) -> None:
    """Put the directory `new` (a temporary beside `out`) at `out`, keeping the old `out` until
    the new one is in place: the old one is renamed aside, the new one renamed in, then the old
    one removed. A failure restores the old one; a kill between the two renames leaves it aside
    as '.<name>.old-*' (`restore_aside` puts it back)."""
    new, out = Path(new), Path(out)
    aside = None
    if out.exists() or out.is_symlink():
        aside = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()


def restore_aside(out) -> None:
    """After a kill between `swap_dir`'s two renames: when `out` is missing and its old copy is
    beside it ('.<name>.old-*'), put the old copy back."""
    out = Path(out)
    if out.exists() or out.is_symlink() or not out.parent.is_dir():
        return
    olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], out)
