"""Plain NumPy definitions of litecomp's C kernels, one module per kernel family.

They are slow and obvious on purpose: the tests compare every C kernel with its twin here.
"""
