"""Export to the formats runtimes load: compressed-tensors folders (transformers, vLLM) and
GGUF model files (llama.cpp and what is built on it), plus llama.cpp importance matrices.
See docs/export.md.

- ``compressed_tensors(state_dict, out_dir, *, config=None, recipe=None)`` and
  ``read_compressed_tensors(path)``;
- ``gguf(state_dict, path, *, config=None, qtype="Q8_0", tokenizer=None, imatrix=None)``;
- ``imatrix``: read, write and accumulate GGUF imatrix files.
"""

from . import imatrix  # noqa: F401
from .ct import compressed_tensors, read_compressed_tensors  # noqa: F401
from .ggufmodel import gguf  # noqa: F401

__all__ = ["compressed_tensors", "read_compressed_tensors", "gguf", "imatrix"]
