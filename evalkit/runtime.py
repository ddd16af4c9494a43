"""Device resolution, TF32 control and per-sample random generators.

`evalkit.context.Context` resolves the device once per command (``resolve_device``) and owns the
process group; the rank helpers left here serve modules not yet moved to the context. No MPI, no
global environment writes (``CUDA_VISIBLE_DEVICES`` is never touched).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch

from evalkit.errors import InputError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a user's device string into a ``torch.device``, failing clearly if it does not exist.

    ``None`` or ``"auto"`` picks ``cuda:<local rank>`` when CUDA exists, else ``cpu``.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = (device or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise InputError(f"--device: {spec!r} is not a device (expected cpu, cuda, cuda:N or auto)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA was requested but this machine has no CUDA device "
                             f"(torch {torch.__version__}); use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank() % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    return dev


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Disable TF32 for matmuls and convolutions inside the block (metric and feature math)."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
        torch.backends.cudnn.allow_tf32 = old_cudnn


# ---------------------------------------------------------------------------------------------
# Distributed (torchrun). Rank/world size come from the environment torchrun sets.

def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device) -> None:
    """Initialise the process group when launched by torchrun with several processes; else no-op."""
    if not launched_by_torchrun() or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard_range(n: int, r: int | None = None, w: int | None = None) -> range:
    """Indices of ``range(n)`` that rank ``r`` of ``w`` owns: contiguous, balanced, in order."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    per, extra = divmod(n, w)
    start = r * per + min(r, extra)
    return range(start, start + per + (1 if r < extra else 0))


# ---------------------------------------------------------------------------------------------
# Per-sample generators: sample i's randomness depends on (seed, i) alone, never on batch size,
# process count or resume point.

def sample_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, index) with a 64-bit mix, so nearby seeds do not overlap."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    gen = torch.Generator(device=device)
    gen.manual_seed(x & (2**63 - 1))
    return gen
