"""NumPy definitions of the shrink kernels."""

import numpy as np


def token_counts(batches, vocab):
    """counts[id] = how often id occurs over all batches (ids in [0, vocab))."""
    counts = np.zeros(vocab, np.int64)
    for b in batches:
        b = np.asarray(b).reshape(-1)
        if b.size:
            counts += np.bincount(b.astype(np.int64), minlength=vocab)[:vocab]
    return counts
