"""A run directory's lock: one command at a time trains in it.

`RunLock(run_dir)` holds an exclusive `fcntl.flock` on RUN_DIR/.lock, which holds the PID
of its holder, for the life of a `with` block. The kernel releases the lock when its holder
dies however it dies (SIGKILL included), so a stale lock file left by a dead process is
simply taken over. A second command gets `RunDirLockedError`, one line naming the holder.

    with RunLock("runs/teacher"):
        ...  # train, checkpoint, save
"""

import os

from keras_mm.configs import ConfigError

LOCK_FILE = ".lock"


class RunDirLockedError(ConfigError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on `run_dir` (created if missing) held by this process.

    Args:
        run_dir: the run directory.

    Raises:
        RunDirLockedError: on entering, when another live process holds the lock.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self._descriptor = None

    def __enter__(self):
        import fcntl

        os.makedirs(self.run_dir, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunDirLockedError(
                f"{self.run_dir} is in use by another keras-mm command (process {holder}). "
                "Wait for it to finish or stop it, or choose another --run-dir."
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        os.fsync(descriptor)
        self._descriptor = descriptor
        return self

    def __exit__(self, *exc_info):
        if self._descriptor is not None:
            # The file stays (removing it would race with a waiting process's open).
            os.close(self._descriptor)
            self._descriptor = None
        return False
