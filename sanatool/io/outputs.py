"""Atomic outputs: write into a temporary sibling, rename into place only when complete.

Ctrl-C or a crash leaves no half-written output, an existing output is refused unless
``force``, and an output that is (or contains, or sits inside) an input is always refused.
A run that can be resumed (``sample``) works in a named sibling, :func:`partial_dir`, and
publishes it with :func:`replace_dir` like every other output. :func:`link_or_copy` is how a
file of an input reaches an output.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sanatool.errors import OutputExistsError, RunFailure
from sanatool.formatting import human_bytes

log = logging.getLogger(__name__)

# A temporary sibling is named after the run that owns it, ``.OUT.tmp-PID-HOST-RANDOM`` (``.OUT.old-PID-HOST``
# for an output being replaced), so that a later run can tell the leftovers of a dead run (kill -9, power
# loss) from the work of a live one. HOST keeps a run on another machine sharing the file system safe.
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_OWNED = re.compile(r"\.(?:tmp|old)-(\d+)-([0-9a-f]{8})(?:-|$)")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def check_output_path(out: str | os.PathLike, force: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Validate an output path before any work starts; return it resolved.

    Refuses an output equal to, inside, or containing any input, and an existing output
    without ``force``.
    """
    given = Path(out).expanduser()
    # The output is the name given, in its real parent: ``-o LINK --force`` replaces the link, never the
    # dir it points to. The overlap check looks through the link too.
    out_path = given.parent.resolve() / given.name if given.name not in ("", ".", "..") else given.resolve()
    for item in inputs:
        in_path = Path(item).expanduser().resolve()
        if any(
            path == in_path or in_path in path.parents or path in in_path.parents
            for path in (out_path, given.resolve())
        ):
            raise OutputExistsError(
                f"output {out} overlaps the input {item}; choose another output path (inputs are never modified)"
            )
    if (out_path.exists() or out_path.is_symlink()) and not force:
        raise OutputExistsError(
            f"output {out} already exists; pass --force to replace it or choose another path"
        )
    if not out_path.parent.is_dir():
        if out_path.parent.exists() or any(p.exists() and not p.is_dir() for p in out_path.parents):
            raise OutputExistsError(f"output {out} cannot be made: a parent of it is a file, not a directory")
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


def _temp_prefix(out: Path, kind: str = "tmp") -> str:
    return f".{out.name}.{kind}-{os.getpid()}-{_HOST}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` left by dead runs on this machine (killed mid-write);
    return them. A live run's, or another machine's, are left alone."""
    removed = []
    try:
        siblings = list(out.parent.glob(f".{glob.escape(out.name)}.*-*"))
    except OSError:
        return removed
    for path in siblings:
        match = _OWNED.match(path.name, len(out.name) + 1) if path.name.startswith(f".{out.name}.") else None
        if match is None or match.group(2) != _HOST or _alive(int(match.group(1))):
            continue
        _remove(path)
        removed.append(path)
        log.warning("removed %s, left by a run of %s that died (pid %s)", path, out, match.group(1))
    return removed


def _no_space(err: OSError, out: Path, needed: int | None) -> RunFailure:
    try:
        free = f"; {human_bytes(shutil.disk_usage(out.parent).free)} is free there now"
    except OSError:
        free = ""
    need = f"it needs about {human_bytes(needed)}" if needed else "free some space"
    return RunFailure(
        f"no space left on the device while writing {out} ({err.filename or out.parent}): {need}{free}"
    )


@contextmanager
def atomic_output_dir(
    out: str | os.PathLike,
    force: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    size: int | None = None,
) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it replaces ``out``.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and ``out`` is
    left as it was. Without ``force``, an ``out`` that appeared while this run was writing (another
    run to the same path) is refused, never replaced. Stale temporaries of dead runs are removed
    first. A full disk is a :class:`RunFailure` that names ``out`` and ``size`` (the bytes the
    output needs, when known).
    """
    out_path = check_output_path(out, force, inputs)
    remove_stale_temps(out_path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out_path) + "-", dir=out_path.parent))
    try:
        give_usual_mode(tmp)
        yield tmp
        replace_dir(tmp, out_path, force)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in _NO_SPACE:
            raise _no_space(err, out_path, size) from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(finished: Path, out: Path, force: bool = True) -> None:
    """Rename a finished working dir to ``out``; an existing ``out`` is replaced only with ``force``.

    The old output is moved aside first, so a failure between the two renames loses nothing. A link
    at ``out`` is replaced, never what it points to.
    """
    if not force:
        # rename(2) never replaces a non-empty dir (and every output holds files): no window between
        # a check and the rename for another run to slip into.
        try:
            if out.exists() or out.is_symlink():
                raise FileExistsError(errno.EEXIST, "exists", str(out))
            os.rename(finished, out)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as err:
            raise _appeared(out) from err
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise
            raise _appeared(out) from err
        return
    if out.exists() or out.is_symlink():
        old = out.parent / _temp_prefix(out, "old")
        os.replace(out, old)
        os.replace(finished, out)
        _remove(old)
    else:
        os.replace(finished, out)


def _appeared(out: Path) -> OutputExistsError:
    return OutputExistsError(f"{out} appeared while this run was writing; rerun with --force to replace it")


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
    """Yield a temporary file path beside ``out``; on success it is renamed to ``out``.

    Without ``force``, an ``out`` that appeared meanwhile is refused (as in :func:`atomic_output_dir`).
    """
    out_path = check_output_path(out, force, inputs)
    remove_stale_temps(out_path)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(out_path) + "-", dir=out_path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        give_usual_mode(tmp)
        yield tmp
        if force:
            os.replace(tmp, out_path)
        else:
            _publish_new_file(tmp, out_path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in _NO_SPACE:
            raise _no_space(err, out_path, None) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _publish_new_file(tmp: Path, out: Path) -> None:
    # link(2) fails if ``out`` exists: a rename that never replaces. Where hard links are not
    # allowed, check just before the rename instead.
    try:
        os.link(tmp, out)
    except FileExistsError as err:
        raise _appeared(out) from err
    except OSError:
        if out.exists() or out.is_symlink():
            raise _appeared(out) from None
        os.replace(tmp, out)
    else:
        tmp.unlink()
