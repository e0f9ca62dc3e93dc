"""Run work over a batch in chunks, halving the chunk on out-of-memory (the one OOM policy of the library)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

# torch < 2.5 only has the CUDA-specific name; looked up once so `except` never hits a missing attribute.
OOM_ERROR = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
ProgressCallback = Callable[[int, int], None]


def run_chunked(run: Callable[[int, int, Callable[[int], None]], Tensor], n_total: int, batch_size: int,
                steps_per_chunk: int, progress: ProgressCallback | None) -> list[Tensor]:
    """Call ``run(start, n, report)`` over [0, n_total) in chunks of ``batch_size``, halving on out-of-memory.

    ``report(i)`` (i of ``steps_per_chunk`` done in this chunk) drives ``progress(done, total)``, whose total
    is recomputed after a retry. A chunk of one that still runs out of memory re-raises; later chunks keep the
    smaller size.
    """
    results: list[Tensor] = []
    chunk, start, done = batch_size, 0, 0
    while start < n_total:
        n = min(chunk, n_total - start)
        total = done + steps_per_chunk * math.ceil((n_total - start) / chunk)

        def report(i: int, _done=done, _total=total) -> None:
            if progress is not None:
                progress(_done + i, _total)

        try:
            out = run(start, n, report)
        except OOM_ERROR:
            if n <= 1:
                raise
            chunk = max(1, n // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        results.append(out)
        done += steps_per_chunk
        start += n
    return results
