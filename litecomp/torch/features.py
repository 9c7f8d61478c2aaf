"""Feature (hidden-state) distillation: match chosen student layers to chosen teacher layers.

FitNets / TinyBERT style: forward hooks keep each chosen layer's output during the student's
and the teacher's forward passes; the loss is the MSE or cosine distance between them (the
fused C kernels of ``DistillationLoss``), with a learned ``nn.Linear`` projecting the
student's width onto the teacher's where the two differ.
"""

import torch
from torch import nn

from .. import distill as _d
from .distill import DistillationLoss


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class FeatureDistillation(nn.Module):
    """``FeatureDistillation(student, teacher, {student_layer: teacher_layer}, kind="mse",
    example=inputs)``; after ``student(x)`` and ``teacher(x)`` have run, ``feats()`` is the
    summed loss over the pairs (times ``weight``).

    pairs: a dict ``{student module: teacher module}`` or a list of such pairs of names
    (``model.named_modules()``).  A layer's output is its first tensor (``[..., width]``, every leading index one
    row).  kind: ``"mse"`` (mean squared error over the width) or ``"cosine"`` (1 - cosine
    similarity), averaged over rows.  example: inputs both models are run on once, without
    gradient, to learn the widths; a projection ``nn.Linear(student width, teacher width,
    bias=False)`` is made for each pair whose widths differ (``project=True`` makes one for
    every pair).  The projections are this module's parameters: give them to the optimizer.
    ``remove()`` takes the hooks off the models.
    """

    def __init__(self, student, teacher, pairs, *, example, kind="mse", weight=1.0,
                 project=False):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise _d.ArgumentError(f"kind: {kind!r} is not one of 'mse', 'cosine'")
        pairs = list(pairs.items() if isinstance(pairs, dict) else pairs)
        if not pairs or any(len(p) != 2 for p in pairs):
            raise _d.ArgumentError("pairs: expected (student module, teacher module) names")
        self.pairs = pairs
        self.weight = float(weight)
        self.loss = DistillationLoss(kind)
        self._seen = {"student": {}, "teacher": {}}
        self._hooks = []
        for side, model, names in (("student", student, [p[0] for p in pairs]),
                                   ("teacher", teacher, [p[1] for p in pairs])):
            modules = dict(model.named_modules())
            for name in names:
                if name not in modules:
                    raise _d.ArgumentError(f"pairs: the {side} has no module {name!r}")
                self._hooks.append(modules[name].register_forward_hook(self._keeper(side, name)))
        with torch.no_grad():
            was = student.training, teacher.training
            student.eval()
            teacher.eval()
            try:
                student(example)
                teacher(example)
            finally:
                student.train(was[0])
                teacher.train(was[1])
        widths = [(self._seen["student"][s].shape[-1], self._seen["teacher"][t].shape[-1])
                  for s, t in pairs]
        self._clear()
        self.projections = nn.ModuleList(
            nn.Linear(ws, wt, bias=False) if (ws != wt or project) else nn.Identity()
            for ws, wt in widths)

    def _keeper(self, side, name):
        def hook(module, args, out):
            self._seen[side][name] = _first_tensor(out)
        return hook

    def _clear(self):
        for d in self._seen.values():
            d.clear()

    def forward(self):
        """The loss of the features the last forward passes left; they are then dropped."""
        total = 0.0
        try:
            for (s, t), proj in zip(self.pairs, self.projections):
                try:
                    fs, ft = self._seen["student"][s], self._seen["teacher"][t]
                except KeyError as exc:
                    raise _d.ArgumentError(f"pairs: no output of {exc.args[0]!r} yet; run "
                                           "the student and the teacher first") from None
                total = total + self.loss(proj(fs), ft.detach())
        finally:
            self._clear()
        return self.weight * total

    def remove(self):
        """Take the hooks off both models."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
