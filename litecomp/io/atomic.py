"""Safe writes: every file goes to a temporary sibling and is renamed into place only when
it is complete and flushed, so an error or a killed process never leaves a partial file at
the target path, and a previous file there stays intact until the new one replaces it."""

import contextlib
import os
import tempfile

_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


@contextlib.contextmanager
def atomic_write(path, *, fsync=True):
    """``with atomic_write(path) as f:`` -- f is a binary file in path's directory; on a
    clean exit it is flushed, fsync'ed and renamed to ``path``; on an exception it is
    removed and ``path`` is untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
