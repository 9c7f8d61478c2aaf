"""litecomp's exception family.

Every error litecomp raises on bad input is a LitecompError, and also a subclass of the
built-in exception a caller would expect (ValueError, TypeError), so ``except ValueError``
keeps working.  Messages name the argument and say what is wrong with it.
"""


class LitecompError(Exception):
    """Base class of every litecomp error."""


class ArgumentError(LitecompError, ValueError):
    """An argument has a value litecomp cannot use (out of range, unknown option, ...)."""


class DTypeError(LitecompError, TypeError):
    """An array has a dtype the function does not take."""


class ShapeError(LitecompError, ValueError):
    """Array shapes do not fit the function or each other."""


class NonFiniteError(ArgumentError):
    """NaN (or infinity) where the function does not allow it."""


class FormatError(LitecompError, ValueError):
    """A file or packed buffer is malformed, truncated or inconsistent."""


class UnsafeCheckpointError(FormatError):
    """A checkpoint asks for a Python global outside litecomp's allowlist."""


__all__ = [
    "LitecompError", "ArgumentError", "DTypeError", "ShapeError", "NonFiniteError",
    "FormatError", "UnsafeCheckpointError",
]
