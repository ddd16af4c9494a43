"""ADM (guided-diffusion) generators: the base sampler with optional classifier guidance, and the
upsampler stage; both implement `evalkit.generator.Generator`.

Compared with the reference scripts (`scripts/image_sample.py`, `classifier_sample.py`,
`super_res_sample.py` at `evalkit.REFERENCE_COMMIT`): the reference draws labels, x_T and the step
noise per batch from one unseeded device generator; here sample i draws, in the reference's order,
its label (from the allowed classes), its x_T [3, H, W] and one [3, H, W] noise tensor per step
from its own CPU generator (seed, i) (`evalkit.sampling.noise`). Upsampling conditions on
low_res = uint8 / 127.5 − 1, NCHW, at the stored size (the model upsamples it bilinearly inside),
labels from ``arr_1`` when class-conditional, always ancestral sampling.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from evalkit.checkpoints import LoadedModel, load_checkpoint
from evalkit.context import Context
from evalkit.diffusion import adm_denoiser, create_diffusion, samples_to_uint8
from evalkit.errors import CheckpointError
from evalkit.guidance import classifier_guidance
from evalkit.sampling.chunk import FixedChunk
from evalkit.sampling.noise import SampleNoise
from evalkit.sampling.request import ModelSpec, SampleRequest, UpsamplerSettings, check_base
from evalkit.samplers import sample
from evalkit.store import BatchReader, open_batch

#: ``fn(indices) -> (uint8 [B, H, W, 3], int64 [B] | None)``
BatchFn = Callable[[range], tuple[np.ndarray, "np.ndarray | None"]]
FAMILY = "adm"


def load_model(spec: ModelSpec, device: torch.device, use_fp16: bool | None) -> LoadedModel:
    """Load `spec`'s weights onto `device`; CheckpointError when the file changed since it was hashed."""
    loaded = load_checkpoint(spec.checkpoint, preset=spec.preset, flags=spec.flags, kind=spec.kind,
                             device=device, use_fp16=use_fp16)
    assert use_fp16 is None or loaded.use_fp16 == use_fp16
    if loaded.sha256 != spec.checkpoint_sha256:
        raise CheckpointError(f"{spec.checkpoint} changed since the run was configured (sha256 "
                              f"{loaded.sha256[:12]}… != {spec.checkpoint_sha256[:12]}…)")
    return loaded


def adm_batches(request: SampleRequest, device: torch.device, model: torch.nn.Module,
                diffusion_settings: dict[str, Any], classifier: torch.nn.Module | None = None) -> BatchFn:
    """The batch function of `request` around networks already on `device` (eval mode).

    ``diffusion_settings``: ``create_diffusion`` keywords of the model (respacing is taken from
    `request`); `classifier` guides at ``request.classifier_scale`` when given.
    """
    diffusion = create_diffusion(**{**diffusion_settings, "timestep_respacing": request.timestep_respacing})
    size = request.model.image_size
    model = FixedChunk(model, request.compute_chunk)
    classifier = FixedChunk(classifier, request.compute_chunk) if classifier is not None else None

    def fn(indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        rng = SampleNoise(request.seed, indices, device)
        y = rng.labels(request.classes, request.num_classes) if request.has_labels else None
        x_T = rng.randn((3, size, size))
        denoiser = adm_denoiser(model, diffusion, clip_denoised=request.clip_denoised,
                                model_kwargs={"y": y} if request.model.class_cond else {})
        if classifier is not None:
            denoiser = classifier_guidance(denoiser, diffusion, classifier, request.classifier_scale, y)
        x0 = sample(denoiser, diffusion, x_T, sampler=request.sampler, eta=request.eta, noise=rng.step_noise)
        return samples_to_uint8(x0), (y.cpu().numpy() if y is not None else None)

    return fn


def upsample_batches(settings: UpsamplerSettings, rows: BatchReader, device: torch.device,
                     model: torch.nn.Module, diffusion_settings: dict[str, Any]) -> BatchFn:
    """``fn(indices)``: upsample base samples `indices` of `rows` (labels kept from arr_1)."""
    diffusion = create_diffusion(**{**diffusion_settings, "timestep_respacing": settings.timestep_respacing})
    net = FixedChunk(model, settings.compute_chunk)
    size = settings.model.image_size

    def fn(indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        rng = SampleNoise(settings.seed, indices, device)
        # Reference conditioning: uint8 -> [-1, 1] float32, NCHW, at the stored (small) size.
        low = torch.from_numpy(rows.read_images(indices.start, indices.stop)).to(device)
        low_res = (low.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()
        labels = rows.labels[indices.start:indices.stop] if rows.labels is not None else None
        kwargs: dict[str, torch.Tensor] = {"low_res": low_res}
        if settings.model.class_cond:
            kwargs["y"] = torch.from_numpy(labels).to(device)
        x_T = rng.randn((3, size, size))
        denoiser = adm_denoiser(net, diffusion, clip_denoised=settings.clip_denoised, model_kwargs=kwargs)
        x0 = sample(denoiser, diffusion, x_T, sampler="ancestral", noise=rng.step_noise)
        return samples_to_uint8(x0), labels

    return fn


class ADMSampler:
    """`Generator` of a (device-resolved) `SampleRequest`: the base store of `evalkit sample`."""

    kind = "sample"
    family = FAMILY
    desc = "sampling"

    def __init__(self, request: SampleRequest):
        self.request = request
        self.num_samples = request.num_samples
        self.image_size = request.model.image_size
        self.has_labels = request.has_labels
        self._fn: BatchFn | None = None

    def settings(self) -> dict[str, Any]:
        return self.request.base_settings()

    def provenance(self) -> dict[str, Any]:
        return self.request.to_dict()

    def prepare(self, ctx: Context) -> None:
        r = self.request
        loaded = load_model(r.model, ctx.device, r.use_fp16)
        clf = load_model(r.classifier, ctx.device, r.classifier_use_fp16).module if r.classifier else None
        self._fn = adm_batches(r, ctx.device, loaded.module, loaded.diffusion, clf)

    def make_batch(self, indices: range, ctx: Context) -> tuple[np.ndarray, np.ndarray | None]:
        if self._fn is None:
            self.prepare(ctx)
        return self._fn(indices)


class Upsampler:
    """`Generator` that upsamples the first `num_samples` images of the npz at `base_path`.

    `settings` is the store's identity (the standalone request's, or a cascade's base settings
    plus the upsampler's); `record` its provenance.
    """

    kind = "upsample"
    family = FAMILY
    desc = "upsampling"

    def __init__(self, ups: UpsamplerSettings, base_path: str, num_samples: int, settings: dict[str, Any],
                 record: dict[str, Any]):
        self.ups, self.base_path = ups, str(base_path)
        self.num_samples, self.image_size = int(num_samples), ups.model.image_size
        self._settings, self._record = settings, record
        with open_batch(self.base_path) as rows:
            self.has_labels = rows.labels is not None
        self._fn: BatchFn | None = None

    def settings(self) -> dict[str, Any]:
        return self._settings

    def provenance(self) -> dict[str, Any]:
        return self._record

    def prepare(self, ctx: Context) -> None:
        rows = open_batch(self.base_path)
        check_base(rows, self.ups.model, self.base_path)
        loaded = load_model(self.ups.model, ctx.device, self.ups.use_fp16)
        self._fn = upsample_batches(self.ups, rows, ctx.device, loaded.module, loaded.diffusion)

    def make_batch(self, indices: range, ctx: Context) -> tuple[np.ndarray, np.ndarray | None]:
        if self._fn is None:
            self.prepare(ctx)
        return self._fn(indices)
