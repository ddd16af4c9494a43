"""Device resolution, TF32 control and per-sample random generators.

`evalkit.context.Context` resolves the device once per command (``resolve_device``) and owns the
process group. No MPI, no global environment writes (``CUDA_VISIBLE_DEVICES`` is never touched).
"""

from __future__ import annotations

import contextlib
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


def local_rank() -> int:
    """This process's GPU index on its node (torchrun's LOCAL_RANK; 0 in a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


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
