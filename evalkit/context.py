"""The process context: one device, one rank/world, and every collective evalkit uses.

Only the CLI creates a distributed context (``Context.create``), once per command, and closes it
when the command ends; library entry points take a ``Context`` and never initialise the process
group themselves. ``Context.local(device)`` is the single-process context for library callers and
tests. Collectives are no-ops in a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from evalkit.errors import EvalkitError
from evalkit.runtime import local_rank, resolve_device

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


@dataclass
class Context:
    """Where this process computes and how it relates to the other processes of its job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this context initialised the process group and tears it down

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def local(cls, device: str | torch.device | None = "cpu") -> "Context":
        """A single-process context on `device` (``None``/"auto": CUDA if present, else CPU)."""
        return cls(device=resolve_device(device))

    @classmethod
    def create(cls, device: str | torch.device | None = None) -> "Context":
        """The CLI's context: resolve `device`, and join the torchrun job when launched by torchrun."""
        dev = resolve_device(device)
        if not launched_by_torchrun():
            return cls(device=dev)
        dist = torch.distributed
        owns = False
        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=30))
            owns = True
        return cls(device=dev, rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns)

    def close(self) -> None:
        """Tear down the process group if this context created it (idempotent)."""
        if self.owns_group and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.owns_group = False

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return (self.world_size > 1 and torch.distributed.is_available()
                and torch.distributed.is_initialized())

    @property
    def local_rank(self) -> int:
        return local_rank()

    def shard_range(self, n: int) -> range:
        """This rank's contiguous, balanced, in-order part of ``range(n)``."""
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (1 if self.rank < extra else 0))

    # -- collectives (no-ops in one process) ---------------------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_rank0(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and give every rank its result; an EvalkitError is raised on every rank."""
        value: Any = None
        error: EvalkitError | None = None
        if self.is_main:
            try:
                value = fn()
            except EvalkitError as exc:
                error = exc
        value, error = self.broadcast((value, error))
        if error is not None:
            raise error
        return value

    def gather_rows(self, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Concatenate every rank's float32 rows in rank order, on every rank (padded all_gather)."""
        if not self.distributed:
            return local
        dist = torch.distributed
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        rows = next(iter(local.values())).shape[0]
        counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([rows], dtype=torch.int64, device=dev))
        sizes = [int(c.item()) for c in counts]
        longest = max(sizes)
        out = {}
        for name, array in local.items():
            padded = torch.zeros((longest, array.shape[1]), dtype=torch.float32, device=dev)
            padded[:rows] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(dev)
            parts = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(parts, padded)
            out[name] = np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, sizes)])
        return out
