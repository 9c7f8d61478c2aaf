"""Safe writes: every file goes to a temporary sibling and is renamed into place only when
it is complete and flushed, so an error, a Ctrl-C or a killed process never leaves a
partial file at the target path, and a previous file there stays intact until the new one
replaces it.  ``AtomicFiles`` does the same for a set of files (shards and their index):
all are written first, then renamed together with Ctrl-C held off, so a folder never mixes
an old checkpoint's files with a new one's."""

import contextlib
import os
import signal
import tempfile
import threading

_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


@contextlib.contextmanager
def deferred_interrupt():
    """Hold off Ctrl-C (SIGINT) until the block ends, then raise it: for short steps that
    must not stop halfway (renaming a set of files, swapping a model's layers).  Off the
    main thread, where Python delivers no signals, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending:
            if callable(old):
                old(signal.SIGINT, pending[0])        # default: raises KeyboardInterrupt
            elif old == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _temp_beside(path):
    folder = os.path.dirname(os.path.abspath(path))
    return tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                            suffix=".tmp")


def _finish(f, fsync):
    f.flush()
    if fsync:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_write(path, *, fsync=True):
    """``with atomic_write(path) as f:`` -- f is a binary file in path's directory; on a
    clean exit it is flushed, fsync'ed and renamed to ``path``; on an exception (Ctrl-C
    included) it is removed and ``path`` is untouched."""
    with AtomicFiles(fsync=fsync) as group:
        with group.open(path) as f:
            yield f


class AtomicFiles:
    """``with AtomicFiles() as g:`` then ``with g.open(path) as f:`` for each file; they
    are renamed into place together when the outer block ends cleanly (``g.on_commit``
    callables run in the same uninterruptible step), and all removed otherwise."""

    def __init__(self, *, fsync=True):
        self.fsync = fsync
        self.pending = []          # (temporary path, target path)
        self.on_commit = []

    @contextlib.contextmanager
    def open(self, path):
        path = os.fspath(path)
        with deferred_interrupt():    # a Ctrl-C right after mkstemp must not orphan the file
            fd, tmp = _temp_beside(path)
            self.pending.append((tmp, path))
            f = os.fdopen(fd, "w+b")
        with f:
            yield f
            _finish(f, self.fsync)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            with deferred_interrupt():
                mode = 0o666 & ~_umask()   # mkstemp makes files 0600; give open()'s mode
                for tmp, _path in self.pending:
                    os.chmod(tmp, mode)
                for tmp, path in self.pending:
                    os.replace(tmp, path)
                self.pending = []
                for fn in self.on_commit:
                    fn()
            return False
        for tmp, _path in self.pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
