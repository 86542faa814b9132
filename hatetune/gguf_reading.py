"""Fast reading of GGUF files through transformers' `gguf_file=` loader.

transformers (5.x) with gguf 0.19 spends ~45 of the ~50 s it takes to load SmolLM2-135M's GGUF on two things
that do not depend on the file's size: `gguf.GGUFReader` slices its `np.memmap` once per header value (the
49,152 tokens and 48,900 merges: ~500,000 slices, each paying numpy's memmap `__array_finalize__` in Python),
and `gguf.get_tensor_name_map` is rebuilt for every tensor (397 calls, 36 ms each). `fast_gguf_reading()` swaps in
a reader that slices a plain ndarray view of the same mapping (same bytes, same fields) and a memoised name map,
for the duration of a `with` block (tests/test_gguf_reading.py: the same fields, tensors and converted folder).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _fast_reader_class():
    import gguf

    class PlainViewGGUFReader(gguf.GGUFReader):
        """`gguf.GGUFReader` whose header parsing slices an ndarray view of its memmap: the same mapped bytes,
        without the memmap subclass's per-slice Python overhead."""

        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            dtype, count = np.dtype(dtype), int(count)
            arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainViewGGUFReader


@functools.lru_cache(maxsize=None)
def _cached_tensor_name_map(arch, n_blocks):
    import gguf

    return gguf.tensor_mapping.get_tensor_name_map(arch, n_blocks)


@contextmanager
def fast_gguf_reading():
    """Within the block, transformers' GGUF loading (it imports both names from `gguf` at call time) uses the
    plain-view reader, one per file (a tokenizer, config and model load read the same file four times; readers
    are read-only), and the memoised tensor name map; the originals are restored on exit."""
    import gguf

    reader_class, readers = _fast_reader_class(), {}

    def read(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if mode != "r" or key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = read, _cached_tensor_name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved
