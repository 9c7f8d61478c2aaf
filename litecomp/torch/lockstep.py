"""Run one call per item in lockstep: every call stops at the same points, so the caller
can act between them, and one call runs at a time.

``oneshot`` uses it to calibrate, compress and propagate a block in a single forward pass:
the block runs on every calibration batch (one call per batch, each paused inside its own
forward), and at each target layer the calls wait until all of them have seen that layer's
input; then the layer is compressed and they go on, through the compressed layer.

The calls are greenlets (the ``greenlet`` package), not threads: they all run on the
caller's thread, so torch's and BLAS's thread pools see one caller (with a thread per call,
each thread gets its own OpenMP team, and their spinning workers made the same forward
passes 4x slower, measured), grad mode and other thread-local state are the caller's, and
the order of work is fixed by construction.
"""

import greenlet

__all__ = ["Lockstep", "LockstepError"]


class LockstepError(RuntimeError):
    """The calls did not stop at the same point (they took different paths)."""


class Lockstep:
    """``run(work, at_point)``: ``work(i)`` for i in 0..n-1, each in its own greenlet.  A
    call runs until it calls ``pause(label)`` or returns; the calls are resumed in order
    0..n-1, and when every one has paused at the same label, ``at_point(label)`` runs and
    the next round starts.  An exception in a call (or in ``at_point``, or Ctrl-C) ends the
    run: the paused calls are unwound (``GreenletExit``) and it propagates."""

    def __init__(self, n: int):
        self.n = n
        self._index = None
        self._main = None

    @property
    def index(self) -> int:
        """The running call's item index (inside ``work``)."""
        return self._index

    def pause(self, label) -> None:
        """Called inside ``work``: stop here until every call has reached ``label``."""
        self._main.switch(("pause", label))

    def run(self, work, at_point) -> list:
        self._main = greenlet.getcurrent()
        calls = [greenlet.greenlet(lambda i=i: ("done", work(i))) for i in range(self.n)]
        results = [None] * self.n
        done = [False] * self.n
        try:
            while True:
                labels = set()
                for i, g in enumerate(calls):
                    if done[i]:
                        continue
                    self._index = i
                    kind, value = g.switch()
                    if kind == "done":
                        done[i], results[i] = True, value
                    else:
                        labels.add(value)
                if all(done):
                    return results
                if any(done) or len(labels) != 1:
                    ended = sum(done)
                    raise LockstepError(
                        f"{ended} of {self.n} calls ended while the others stopped at "
                        f"{sorted(map(str, labels))}" if ended else
                        f"the calls stopped at different points: {sorted(map(str, labels))}")
                at_point(labels.pop())
        finally:
            self._index = None
            for g in calls:
                if g and not g.dead:  # started and paused: unwind its frames
                    g.throw(greenlet.GreenletExit)
