"""Cache locks: identical stage tasks running at once (two flow runs with the same parameters) are serialised
on their cache key, so the second waits for the first and is served from its result (state ``Cached``)
instead of computing the same step again into the same work folder.

Prefect does this with the ``SERIALIZABLE`` isolation level of a task's cache policy and a lock manager.
Its own file lock manager writes a lock file that stays when its holder dies: a flow run killed during a
step (a crashed worker, a SIGKILL) would leave every later identical run waiting for ever. Here a lock is an
``fcntl.flock`` on ``<results folder>/locks/<cache key>.lock``: the kernel releases it when the holder's
process ends, however it ends. It serialises the processes of one machine that share Prefect's local result
folder (a process worker's flow runs, the threads of one flow); runs on other machines have their own cache
(the cache key names the local work folder) and reuse what is already in the object store.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import anyio.to_thread

LOCK_DIR = "locks"  # below Prefect's local result storage folder
POLL_S = 0.2  # seconds between two tries of a lock held elsewhere


def lock_folder() -> Path:
    """Where the lock files live: ``locks/`` in Prefect's local result storage folder (created)."""
    from prefect.settings import get_current_settings

    folder = Path(get_current_settings().results.local_storage_path).expanduser() / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class FlockLockManager:
    """A Prefect ``LockManager`` on ``flock``: held locks die with their process, never left stale."""

    def __init__(self, poll_s: float = POLL_S):
        self.poll_s = poll_s
        self._held: dict[str, tuple[str, int]] = {}  # key -> (holder, open file descriptor holding the flock)
        self._mutex = threading.Lock()
        self._folder: Path | None = None  # fixed at first use: every thread of the process locks in one folder

    def __getstate__(self) -> dict:  # a copy (task options are copied) holds no lock
        return {"poll_s": self.poll_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["poll_s"])

    def _path(self, key: str) -> Path:
        with self._mutex:
            if self._folder is None:
                self._folder = lock_folder()
        return self._folder / f"{key}.lock"

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        """Take the lock of ``key`` for ``holder``, waiting up to ``acquire_timeout`` s (None: as long as it takes).
        ``hold_timeout`` is not needed: the lock ends with the holder's process."""
        with self._mutex:
            if self._held.get(key, ("",))[0] == holder:
                return True
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(self.poll_s)
        with self._mutex:
            self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        """:meth:`acquire_lock` in a worker thread."""
        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``holder``'s lock of ``key`` (ValueError when ``holder`` does not hold it)."""
        with self._mutex:
            held = self._held.get(key)
            if held is None or held[0] != holder:
                raise ValueError(f"no lock on {key!r} held by {holder!r}")
            del self._held[key]
        fcntl.flock(held[1], fcntl.LOCK_UN)
        os.close(held[1])

    def is_locked(self, key: str) -> bool:
        """Someone (this process or another) holds the lock of ``key``."""
        with self._mutex:
            if key in self._held:
                return True
        path = self._path(key)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock taken just now
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """``holder`` holds the lock of ``key`` in this process."""
        with self._mutex:
            return self._held.get(key, ("",))[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until nobody holds the lock of ``key``; False when ``timeout`` s passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """:meth:`wait_for_lock` in a worker thread."""
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)
