"""A stage's output folder: one writer at a time, replaced atomically, never over an input.

* `OutputLock`: a second run on the same folder exits 2 naming the holder (pid, host); a lock
  left by a dead process is taken over with a warning.
* `staged_output`: everything is written into a sibling staging folder and swapped in with one
  `renameat2(RENAME_EXCHANGE)`, so a kill leaves the old complete folder or the new one.
* `check_not_input`: an output that is also an input of the run exits 2 unless
  `overwrite_input: true`.
The failures each one prevents, and where the files are: docs/reliability.md.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import glob
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

from filelock import FileLock, Timeout

from llamaduo import leak_check
from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.outputs")

F = TypeVar("F", bound=Callable[..., int])


def _sibling(out_dir: Path, tag: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{tag}"


def _writable(path: Path) -> bool:
    """access() plus the write bits, so a folder marked read-only is refused even for root."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def check_output_path(out_dir: Path, key: str) -> None:
    """Exit 2, naming the path and the fix, for an output path that cannot be written."""
    for folder in (out_dir, *out_dir.parents):
        if folder.is_symlink() and not folder.exists():
            raise UsageError(f"{key}: the output path {out_dir} goes through the dangling symlink {folder} "
                             f"(to {os.readlink(folder)}, which does not exist); remove it or choose another {key}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{key}: the output path {out_dir} is a file, not a folder; choose another {key}")
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"{key}: the output path {out_dir} is under the file {folder}; choose another {key}")
            if not _writable(folder):
                raise UsageError(f"{key}: the folder {folder} is not writable, so {out_dir} cannot be written; "
                                 f"fix its permissions or choose another {key}")
            if folder != out_dir:
                break
            # the output folder itself exists: its parent must take the swap too
            if not _writable(folder.parent):
                raise UsageError(f"{key}: the folder {folder.parent} is not writable, so {out_dir} cannot be "
                                 f"replaced; fix its permissions or choose another {key}")
            break


# --------------------------------------------------------------------------- the lock


class OutputLock:
    """Exclusive use of an output folder for one run (see module docstring)."""

    def __init__(self, out_dir: Path, key: str) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.key = key
        self.lock_path = _sibling(self.out_dir, "lock")
        self.owner_path = _sibling(self.out_dir, "lock.owner")
        self._lock: Optional[FileLock] = None
        self._made: list[Path] = []  # the parent folders __enter__ created (removed again if left empty)

    def __enter__(self) -> "OutputLock":
        check_output_path(self.out_dir, self.key)
        self._made = [p for p in (self.out_dir.parent, *self.out_dir.parent.parents) if not p.exists()]
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.lock_path), timeout=0)
            self._lock.acquire()
        except Timeout:
            holder = self._read_owner()
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
                   if holder else "a process that has not yet written its pid")
            raise UsageError(f"{self.key}: the output folder {self.out_dir} is in use by another run ({who}); "
                             f"wait for it to finish or choose another {self.key}") from None
        except OSError as err:
            raise UsageError(f"{self.key}: cannot lock the output folder {self.out_dir} ({err.strerror}: "
                             f"{err.filename}); choose another {self.key}") from None
        stale = self._read_owner()
        if stale:
            alive = stale.get("host") == socket.gethostname() and _pid_alive(stale.get("pid"))
            logger.warning("took over the lock on %s left by pid %s on host %s (started %s)%s", self.out_dir,
                           stale.get("pid"), stale.get("host"), stale.get("started"),
                           "" if alive else ": that process is gone")
        self.owner_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        recover_leftovers(self.out_dir)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.owner_path.unlink(missing_ok=True)
            if not os.path.lexists(self.out_dir):  # nothing written (a refused input): leave no trace either
                self.lock_path.unlink(missing_ok=True)  # still held: a run that opened it now fails fast
        finally:
            if self._lock is not None:
                self._lock.release()
        if not os.path.lexists(self.out_dir):
            for folder in self._made:  # innermost first
                try:
                    folder.rmdir()
                except OSError:  # not empty (or gone): someone else's now
                    break

    def _read_owner(self) -> dict:
        try:
            return json.loads(self.owner_path.read_text())
        except (OSError, ValueError):
            return {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError) as err:
        return isinstance(err, PermissionError)
    return True


# --------------------------------------------------------------------------- atomic replacement


def recover_leftovers(out_dir: Path) -> None:
    """After a kill: put back an old folder moved aside by an interrupted two-rename swap,
    then delete unfinished staging folders. Called under the lock."""
    out_dir = Path(out_dir).absolute()
    olds = sorted(out_dir.parent.glob(f".{glob.escape(out_dir.name)}.old-*"))
    if olds and not out_dir.exists():
        os.rename(olds.pop(), out_dir)
        logger.warning("restored %s from an interrupted replacement", out_dir)
    for left in [*olds, *out_dir.parent.glob(f".{glob.escape(out_dir.name)}.tmp-*")]:
        shutil.rmtree(left, ignore_errors=True)


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it becomes `out_dir` atomically, with
    every entry of the old `out_dir` it did not rewrite linked over. On an error the old
    folder is untouched and the staging folder removed."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out_dir, f"tmp-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        yield staging
        _carry_over(out_dir, staging)
        _swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the old folder


def publish_files(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Replace `out_dir` atomically with the files `write(staging)` produces (plus the old
    folder's other entries)."""
    with staged_output(out_dir) as staging:
        write(staging)
        leak_check.secure_folder(staging, f"the output {out_dir}")  # the last check, before the swap
    return Path(out_dir)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into `new` every entry of `old` that `new` does not have."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        target = new / entry.name
        if os.path.lexists(target) or entry.name.startswith(".staging-"):
            continue
        _link_tree(entry, target)


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
    else:
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or links not supported
            shutil.copy2(src, dst)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported.
    ctypes because Python's os module does not expose renameat2's flags."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Make `staging` the folder at `out_dir`; afterwards `staging` holds the old one (if any)."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if _exchange(staging, out_dir):
        return
    aside = _sibling(out_dir, f"old-{uuid.uuid4().hex[:12]}")
    os.rename(out_dir, aside)  # a kill here is repaired by recover_leftovers
    os.rename(staging, out_dir)
    os.rename(aside, staging)


# --------------------------------------------------------------------------- inputs


def real_path(path: str | Path) -> Path:
    """The path with `~`, `.`, `..` and every symlink resolved (also a dangling one's target):
    `./a/../a`, `a/` and a link to `a` are all the same folder, and must compare equal."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _local_paths(ref: str) -> list[Path]:
    if glob.has_magic(ref):
        return [real_path(p) for p in glob.glob(os.path.expanduser(ref))]
    path = Path(ref).expanduser()
    return [real_path(path)] if path.exists() else []


def _same_id(a: str, b: str) -> bool:
    """Two ids name the same dataset: equal as written, or as normalized paths (a Hub id that
    is not yet a local folder: `org/x` and `org/./x`)."""
    return a.rstrip("/") == b.rstrip("/") or os.path.normpath(a) == os.path.normpath(b)


def check_not_input(out_dir: Path, output_id: str, key: str, inputs: Mapping[str, Optional[str]],
                    overwrite_input: bool, overwrite_key: Optional[str] = "overwrite_input") -> None:
    """Exit 2 when the output would replace, hide or sit inside an input of the same run: the
    same id, the same folder by its real path (symlinks and relative spellings resolved), an
    input inside the output folder, or the output folder inside an input folder."""
    if overwrite_input:
        return
    out = real_path(out_dir)
    for name, ref in inputs.items():
        if not ref:
            continue
        clash = _same_id(str(ref), str(output_id)) or next(
            (p for p in _local_paths(str(ref)) if p == out or out in p.parents or p in out.parents), None)
        if clash:
            raise UsageError(f"{key} '{output_id}' would overwrite the input {name} '{ref}' (the same folder, "
                             f"or one inside the other); choose another {key}"
                             + (f", or set {overwrite_key}: true to replace it on purpose" if overwrite_key else ""))


# --------------------------------------------------------------------------- the stage hook


@dataclass
class OutputPlan:
    """What a stage's run writes and reads; `out_dir=None` means nothing to guard (dry run)."""

    out_dir: Optional[Path]
    output_id: str = ""
    key: str = "output"
    inputs: Mapping[str, Optional[str]] = field(default_factory=dict)
    overwrite_input: bool = False
    overwrite_key: Optional[str] = "overwrite_input"  # the key that allows it (None: no such key)


def guarded_output(plan_of: Callable[..., OutputPlan],
                   precheck: Optional[Callable[..., None]] = None) -> Callable[[F], F]:
    """Decorate a stage's `run(*args)`: run `precheck(*args)` (the stage's value checks, which
    touch no file), refuse an output that is an input, then hold the output lock for the whole
    run. `plan_of` gets the same arguments. One line per stage, so the stages' code stays as
    it is. The precheck comes first so a refused value writes nothing, not even the lock file.
    The decorated function's `check_before_run(*args)` runs the same checks without running
    (the loop's check calls it for every stage before round 0)."""
    def checks(*args: Any) -> OutputPlan:
        if precheck is not None:
            precheck(*args)
        plan = plan_of(*args)
        if plan.out_dir is not None:
            check_output_path(Path(plan.out_dir).absolute(), plan.key)
            check_not_input(plan.out_dir, plan.output_id, plan.key, plan.inputs, plan.overwrite_input,
                            plan.overwrite_key)
        return plan

    def decorate(run: F) -> F:
        @functools.wraps(run)
        def wrapper(*args: Any) -> int:
            plan = checks(*args)
            if plan.out_dir is None:
                return run(*args)
            with OutputLock(plan.out_dir, plan.key):
                return run(*args)
        wrapper.check_before_run = checks  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]
    return decorate
