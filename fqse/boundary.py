"""The CLI boundary: every failure is one line on stderr and exit code 2 (`--debug`: the traceback);
native libraries' log lines are silenced unless `--verbose`; a closed stdout (`fqse ... | head`) ends quietly."""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
import warnings
from typing import Callable

EXIT_ERROR = 2
# Failures a user can cause and fix (bad files, bad arguments, missing resources): their message is the answer.
EXPECTED = (ValueError, OSError, RuntimeError, LookupError, EOFError, MemoryError, ImportError)
OWN_PACKAGES = ("training", "conversion", "runtime", "fqse")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(ValueError):
    """Arguments that do not fit together (checked after parsing); one-line message."""


def quiet_native_logs(verbose: bool) -> None:
    """Keep TensorFlow / TFLite / XLA C++ log lines out of the terminal (set before they are imported)."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF and LiteRT C++ logging: errors only
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # no oneDNN banner
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


# absl/glog lines of TF, XLA and LiteRT ("E0000 00:00:17.. 7303 cuda_dnn.cc:8579] ...") and LiteRT's delegate notes
NATIVE_LOG = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] |WARNING: All log messages before "
                        rb"absl::InitializeLog|INFO: (?:Created|Initialized) TensorFlow Lite)")


class NativeLogFilter:
    """Route fd 2 through a thread that drops native log lines (NATIVE_LOG) and passes everything else on.

    The C++ libraries write to fd 2 directly (some before any log level applies), so this is the one place
    that can keep them out. Partial lines (progress bars) pass at once unless they may start such a line."""

    def __enter__(self) -> "NativeLogFilter":
        sys.stderr.flush()
        self.real = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self.thread = threading.Thread(target=self._pump, args=(r,), daemon=True)
        self.thread.start()
        return self

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.real, data)
        except OSError:  # stderr gone: keep draining so the writers never block
            pass

    def _pump(self, r: int) -> None:
        buf = b""
        while chunk := os.read(r, 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not NATIVE_LOG.match(line):
                    self._write(line + b"\n")
            if buf and (buf[:1] not in b"IWEF" or len(buf) > 400):
                self._write(buf)
                buf = b""
        if buf and not NATIVE_LOG.match(buf):
            self._write(buf)
        os.close(r)

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self.real, 2)  # closes our write end of the pipe: the pump drains and ends
        self.thread.join(timeout=5)
        os.close(self.real)


def _raised_here(exc: BaseException) -> bool:
    """Raised by this project's own code (its message was written for the user), not inside a library."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _in_project(tb.tb_frame.f_code.co_filename)


def _in_project(filename: str) -> bool:
    f = os.path.abspath(filename)
    return f.startswith(ROOT + os.sep) and os.sep + ".venv" + os.sep not in f


def one_line(exc: BaseException) -> str:
    """The exception as one line: own exception classes by message, others prefixed with their type."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if len(msg) > 400:
        msg = msg[:397] + "..."
    own = type(exc).__module__.split(".")[0] in OWN_PACKAGES or _raised_here(exc)
    if own or isinstance(exc, OSError):
        return msg
    return f"{type(exc).__name__}: {msg}"


def _warning_line(cmd: str, verbose: bool) -> Callable:
    """Warnings as one line; those raised by other libraries (TensorFlow's converter notes) only with --verbose."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if verbose or _in_project(filename):
            print(f"fqse {cmd}: warning: {' '.join(str(message).split())}", file=sys.stderr)
    return show


def run(cmd: str, func: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run a subcommand; map failures to one stderr line and an exit code (native log lines hidden unless
    --verbose)."""
    if getattr(args, "verbose", False):
        return _run(cmd, func, args)
    with NativeLogFilter():
        return _run(cmd, func, args)


def _run(cmd: str, func: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    debug = bool(getattr(args, "debug", False))
    if getattr(args, "force", False):
        from runtime.files import allow_replace_readonly
        allow_replace_readonly()
    if not debug:
        warnings.showwarning = _warning_line(cmd, bool(getattr(args, "verbose", False)))
    try:
        func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print(f"fqse {cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # SIGTERM during an atomic write (runtime/files.py) after its cleanup
        if exc.code == 128 + 15:
            print(f"fqse {cmd}: terminated", file=sys.stderr)
        raise
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, no flush error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the boundary: everything becomes one line
        if debug:
            raise
        if isinstance(exc, EXPECTED):
            msg = one_line(exc)
        else:  # a bug: name the exception type whoever raised it
            msg = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (rerun with --debug " \
                  "for the traceback)"
        print(f"fqse {cmd}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--verbose", action="store_true", help="show native libraries' log lines (TensorFlow, TFLite)")
    p.add_argument("--force", action="store_true", help="replace an existing read-only output file")


def _number(kind: type, low: float, low_ok: bool) -> Callable[[str], float]:
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'number' if kind is float else 'whole number'}")
        if not math.isfinite(v) or v < low or (v == low and not low_ok):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'at least' if low_ok else 'above'} {low:g}")
        return v
    return parse


positive_float = _number(float, 0.0, False)
positive_int = _number(int, 1, True)
non_negative_float = _number(float, 0.0, True)
