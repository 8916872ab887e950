"""The run directory: where each stage reads its inputs and writes its outputs.

Files are written to a temporary name on the same filesystem and renamed into place, so a crash
never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RunDir:
    """Paths of one run, following DESIGN.md: data/, model/, eval/ beside config.yaml."""

    def __init__(self, root: str | Path, data: str | Path | None = None):
        """`data` points a run at another run's prepared data (search trials share one data/)."""
        self.root = Path(root)
        self._data = Path(data) if data else None

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self._data or self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def evaluation(self, data_file: str | None = None) -> Path:
        """eval/ for the run's own test split; eval-NAME/ for another file, so eval/ (what the model card
        and the report describe) is never overwritten by scoring new cases."""
        return self.root / f"eval-{Path(data_file).stem}" if data_file else self.eval

    @property
    def search(self) -> Path:
        return self.root / "search"

    def export(self, fmt: str) -> Path:
        return self.root / "export" / fmt

    def split(self, name: str) -> Path:
        return self.data / f"{name}.jsonl"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_executable(path: Path) -> None:
    """Executable as a script a user writes is (0755 under umask 022)."""
    path.chmod(0o777 & ~_current_umask())


def permissions_of_a_normal_write(path: Path) -> None:
    """mkstemp and mkdtemp create 0600 files and 0700 folders (and so does safetensors for weights); give
    `path`, and everything under it, what open() and mkdir() would (0644 and 0755 under umask 022), so
    teammates on a shared machine can read the run."""
    mask = _current_umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextmanager
def replaced_atomically(path: Path) -> Iterator[int]:
    """A file descriptor to write `path` through: a temporary file of its own beside `path`, renamed over
    it when the block ends, deleted if the block fails. Readers never see a half-written file, and
    several processes writing the same file (workers of one search) never share a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        yield fd
        permissions_of_a_normal_write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with replaced_atomically(path) as fd, os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_trials(run_dir: RunDir) -> list[dict[str, str]]:
    """Rows of search/trials.csv, best first; empty when no search ran."""
    path = run_dir.search / "trials.csv"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+$")


def clear_stale(folder: Path, name: str | None = None) -> None:
    """Remove what killed processes left in `folder`: staging folders (.NAME.PID.*, of `name` only
    when given) whose process is gone, and lock files nobody holds."""
    import fcntl

    for entry in folder.glob(".*"):
        staging = _STAGING.match(entry.name)
        if staging and entry.is_dir() and (name is None or staging["name"] == name):
            if not process_alive(int(staging["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
        elif name is None and entry.suffix == ".lock" and entry.is_file():
            with open(entry, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # held: a live process is working
                entry.unlink(missing_ok=True)


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `final` only if the block succeeds; staging
    folders a killed process left for `final` are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}."))
    try:
        yield tmp
        permissions_of_a_normal_write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (processes of one distributed run prepare data in turn).

    The file is removed on release, so no lock file outlives the command; a process killed while
    holding it leaves the file, but the kernel drops the lock with the process, so the next run takes
    it and removes it. A waiter that acquires a file already removed by the holder tries again, so
    two processes never hold "the" lock on different files.
    """
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock_path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def removed_on_failure(root: Path) -> Iterator[None]:
    """A run directory this command created is removed again if the input turns out bad.

    Only input errors (TunelabError) remove it: an interrupted or diverged training keeps its
    checkpoints.
    """
    from tunelab.errors import TunelabError

    existed = root.exists()
    try:
        yield
    except TunelabError as error:
        if not existed and root.exists() and not error.keeps_run_dir:
            shutil.rmtree(root)
        raise
