"""``targets`` / ``ignore`` on a torch model: the patterns of ``litecomp.select`` matched
against module names (``model.named_modules()``) and module class names.

A class-name pattern such as ``"Linear"`` matches every module of that class or of a
subclass (``type(m).__mro__``), so ``"Linear"`` also selects ``NonDynamicallyQuantizableLinear``.
"""

from torch import nn

from ..select import select


def class_names(module: nn.Module) -> tuple:
    """The class names a class-name pattern can match: the module's class and its bases."""
    return tuple(c.__name__ for c in type(module).__mro__)


def select_modules(model: nn.Module, targets=None, ignore=None, *, default=(nn.Linear,),
                   candidates=None, what="modules") -> list:
    """[(name, module)] of the modules ``targets`` selects and ``ignore`` does not remove.

    ``candidates(name, module) -> bool`` limits the modules a workflow can handle at all
    (targets that name only others raise); ``default`` (classes) is what ``targets=None``
    means.  The model itself (name "") is never selected.
    """
    mods = {n: m for n, m in model.named_modules()
            if n and (candidates is None or candidates(n, m))}
    if targets is None:
        mods = {n: m for n, m in mods.items() if isinstance(m, tuple(default))}
    names = select(list(mods), targets, ignore, what=what,
                   classes_of=lambda n: class_names(mods[n]))
    return [(n, mods[n]) for n in names]
