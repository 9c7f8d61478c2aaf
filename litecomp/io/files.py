"""Opening a checkpoint file for reading: regular files only.

A FIFO would block ``open`` forever and a device (``/dev/zero``) never ends, so the file is
opened without blocking and checked with ``fstat`` before anything is read -- a symlink is
followed (the Hugging Face cache links each file to a blob elsewhere), but what it leads to
must be a regular file.  Errors are litecomp errors: ArgumentError when the path cannot be
opened, FormatError when it is not a regular file.
"""

import os
import stat

from ..errors import ArgumentError, FormatError

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)


def open_regular(path):
    """``path`` open as a binary file, checked to be a regular file."""
    try:
        fd = os.open(path, _FLAGS)
    except (OSError, ValueError) as exc:      # ValueError: a NUL byte in the path
        why = getattr(exc, "strerror", None) or str(exc)
        raise ArgumentError(f"path: cannot open {path} ({why})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise FormatError(f"{path}: is {kind}; checkpoints are read from regular files")
        if _FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
