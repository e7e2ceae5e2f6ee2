"""Atomic file writes: models, checkpoints and audio never appear half-written.

A write goes to `.NAME.PID.fqse-tmp.EXT` beside the target, is fsynced, gets the mode the umask gives a new
file, and is renamed over the target (then the folder is fsynced). SIGTERM during the write removes the
temporary file; one left by a killed process (SIGKILL, power loss) is removed by the next write of the same
target once its PID is gone. An existing read-only target is refused unless replacing is allowed (--force).
"""
from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Callable

TMP_TAG = "fqse-tmp"
_replace_readonly = False


class WriteError(ValueError):
    """An output that must not be replaced (read-only without --force); one-line message."""


def allow_replace_readonly(flag: bool = True) -> None:
    """`--force`: replace an existing read-only output (the CLI sets this once)."""
    global _replace_readonly
    _replace_readonly = flag


def temp_path(path: Path, pid: int | None = None) -> Path:
    """The temporary name of a write of `path` by process `pid` (the extension kept for writers that need it)."""
    return path.with_name(f".{path.name}.{pid or os.getpid()}.{TMP_TAG}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temporary files of `path` left by processes that no longer run; returns what was removed."""
    pat = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.{TMP_TAG}{re.escape(path.suffix)}")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob_escape(path.name)}.*.{TMP_TAG}*"):
        m = pat.fullmatch(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


class _TerminateCleanup:
    """While active (main thread only), SIGTERM raises SystemExit(143) so the temporary file is removed."""

    def __enter__(self) -> None:
        self.prev = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.prev = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        if self.prev is not None:
            signal.signal(signal.SIGTERM, self.prev)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Write through a temporary file in the same folder, then rename: no partial file on failure."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: is a folder; give a file name")
    if path.exists() and not _replace_readonly and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise WriteError(f"{path}: exists and is read-only; use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    with _TerminateCleanup():
        try:
            write(str(tmp))
            if not tmp.exists():
                raise WriteError(f"{path}: the writer produced no file")
            os.chmod(tmp, 0o666 & ~_umask())
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(path.parent)
