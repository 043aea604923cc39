"""Atomic outputs: write into a temporary sibling, rename into place only when complete.

Ctrl-C or a crash leaves no half-written output, an existing output is refused unless
``force``, and an output that is (or contains, or sits inside) an input is always refused.
A run that can be resumed (``sample``) works in a named sibling, :func:`partial_dir`, and
publishes it with :func:`replace_dir` like every other output. :func:`link_or_copy` is how a
file of an input reaches an output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sanatool.errors import OutputExistsError


def check_output_path(out: str | os.PathLike, force: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Validate an output path before any work starts; return it resolved.

    Refuses an output equal to, inside, or containing any input, and an existing output
    without ``force``.
    """
    out_path = Path(out).expanduser().resolve()
    for item in inputs:
        in_path = Path(item).expanduser().resolve()
        if out_path == in_path or in_path in out_path.parents or out_path in in_path.parents:
            raise OutputExistsError(
                f"output {out} overlaps the input {item}; choose another output path (inputs are never modified)"
            )
    if out_path.exists() and not force:
        raise OutputExistsError(
            f"output {out} already exists; pass --force to replace it or choose another path"
        )
    if not out_path.parent.exists():
        raise OutputExistsError(f"the parent directory of {out} does not exist; create it first")
    return out_path


def give_usual_mode(path: Path) -> None:
    """Give a path made by ``mkstemp``/``mkdtemp`` (private: 0600/0700) the usual mode under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output_dir(
    out: str | os.PathLike, force: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it replaces ``out``.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and
    ``out`` is left as it was.
    """
    out_path = check_output_path(out, force, inputs)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    give_usual_mode(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_path)


def replace_dir(finished: Path, out: Path) -> None:
    """Rename a finished working dir to ``out``, replacing whatever is there.

    The old output is moved aside first, so a failure between the two renames loses nothing.
    """
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(finished, out)
        _remove(old)
    else:
        os.replace(finished, out)


def partial_dir(out: Path) -> Path:
    """Where an unfinished, resumable run of ``out`` lives (a hidden sibling, renamed to ``out``
    by :func:`replace_dir` when complete)."""
    return out.parent / f".{out.name}.partial"


def link_or_copy(src: Path, dst: Path) -> None:
    """Put the file ``src`` at ``dst`` atomically: a hard link where the file system allows, a copy
    otherwise; parent dirs are made.

    A symlink is resolved first (Hugging Face cache snapshots are symlinks into ``blobs/``), so an
    output holds the bytes, never a link that could point anywhere later.
    """
    real = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(real, tmp)
    except OSError:
        shutil.copy2(real, tmp)
    os.replace(tmp, dst)


@contextmanager
def atomic_output_file(
    out: str | os.PathLike, force: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; on success it is renamed to ``out``."""
    out_path = check_output_path(out, force, inputs)
    fd, name = tempfile.mkstemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent)
    os.close(fd)
    tmp = Path(name)
    give_usual_mode(tmp)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out_path)
