"""NumPy twin of csrc/random.c (splitmix64-based counter RNG)."""

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def bits(n, seed, stream):
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed) ^ _mix(np.uint64(stream) + GOLDEN))
        i = np.arange(1, n + 1, dtype=np.uint64)
        return _mix(key + i * GOLDEN)


def uniform(n, low, high, seed, stream, dtype=np.float32):
    u = (bits(n, seed, stream) >> np.uint64(40)).astype(np.float64) * 2.0 ** -24
    return (low + (high - low) * u).astype(dtype)


def normal(n, mean, std, seed, stream, dtype=np.float32):
    h = bits(n, seed, stream)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0 ** -32
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0 ** -32
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)
    return (mean + std * z).astype(dtype)
