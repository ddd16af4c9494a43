#!/usr/bin/env python
"""Reproduce the demo's trained weights on 2 CPU cores.

    python scripts/train_digits.py features      # the digits feature network (≈ 1 min)
    python scripts/train_digits.py diffusion     # class-conditional ADM UNet, hybrid loss, EMA
    python scripts/train_digits.py classifier    # noisy classifier for guidance
    python scripts/train_digits.py biggan        # class-conditional BigGAN-deep generator (hinge loss, EMA;
                                                 #   ≈ 12 min with --threads 1, which is faster on a busy machine)
    python scripts/train_digits.py all           # the four, in that order
    python scripts/train_digits.py verify        # sample + score the guidance tradeoff of the committed weights
    python scripts/train_digits.py verify-biggan # sample + score the truncation tradeoff of the BigGAN

Writes into evalkit/data/ (atomically) and prints each file's sha256 (record it in
evalkit/presets.py / evalkit/features/digits.py; biggan also writes its config JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "evalkit" / "data"


def _save(state: dict, out: Path, info: dict, t0: float) -> None:
    from evalkit.atomic import atomic_path
    from evalkit.hashing import sha256_file

    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    info = dict(info, seconds=round(time.time() - t0, 1))
    print(json.dumps(info), "->", out, "sha256", sha256_file(out), flush=True)


def _scorer():
    """(score(images, labels) -> IS, FD, sFD, precision, recall, accuracy vs label) against the 1797 real digits."""
    from evalkit.demo.data import digits_images
    import evalkit.features.digits  # noqa: F401  (registers the "digits" extractor)
    from evalkit.features.registry import get_extractor
    from evalkit.metrics import feature_statistics, frechet_distance, inception_score, precision_recall, softmax

    extractor = get_extractor("digits")
    real, _ = digits_images()
    ref = extractor(real)
    mu_r, sig_r = feature_statistics(ref["pool"])
    mu_rs, sig_rs = feature_statistics(ref["spatial"])

    def score(images, labels) -> tuple[float, ...]:
        f = extractor(images)
        is_ = inception_score(softmax(f["logits"]))
        fd = frechet_distance(*feature_statistics(f["pool"]), mu_r, sig_r)
        sfd = frechet_distance(*feature_statistics(f["spatial"]), mu_rs, sig_rs)
        prec, rec = precision_recall(ref["pool"], f["pool"], k=3)
        acc = float((f["logits"].argmax(1) == labels).mean())
        return is_, fd, sfd, prec, rec, acc

    return score


def verify_biggan(args: argparse.Namespace) -> None:
    """Print (truncation, IS, FD, sFD, precision, recall, accuracy vs label) of the digits BigGAN vs the real digits."""
    from evalkit.checkpoints import load_biggan
    from evalkit.demo.gan import load_digits_biggan, sample_biggan
    from evalkit.presets import get_biggan_preset

    preset = get_biggan_preset("digits8_biggan")
    if args.weights_dir is None:
        loaded = load_digits_biggan()
    else:
        loaded = load_biggan(args.weights_dir / preset.weights, args.weights_dir / preset.config,
                             expected_resolution=preset.image_size)
    score = _scorer()
    print(f"weights sha256 {loaded.sha256}, {args.num_samples} samples per truncation, seed {args.seed}")
    print("truncation,IS,FD,sFD,precision,recall,acc_vs_label,seconds", flush=True)
    for t in [float(v) for v in args.truncations.split(",")]:
        t0 = time.time()
        images, labels = sample_biggan(loaded.module, t, args.num_samples, seed=args.seed)
        seconds = time.time() - t0
        is_, fd, sfd, prec, rec, acc = score(images, labels)
        print(f"{t:g},{is_:.3f},{fd:.3f},{sfd:.3f},{prec:.3f},{rec:.3f},{acc:.3f},{seconds:.1f}", flush=True)


def verify(args: argparse.Namespace) -> None:
    """Print (scale, IS, FD, sFD, precision, recall, seconds) for the digits models vs the 1797 real digits."""
    from evalkit.checkpoints import load_checkpoint
    from evalkit.demo.models import DIGITS_PRESETS, digits_request, load_digits_model
    from evalkit.sampling.adm import adm_batches

    unet_p, cls_p = DIGITS_PRESETS
    if args.weights_dir is None:
        unet, cls = load_digits_model(unet_p), load_digits_model(cls_p)
    else:
        unet = load_checkpoint(args.weights_dir / unet_p.weights, preset=unet_p)
        cls = load_checkpoint(args.weights_dir / cls_p.weights, preset=cls_p)
    settings = unet_p.diffusion_settings(args.respacing)
    score = _scorer()
    print(f"respacing {settings['timestep_respacing']}, {args.num_samples} samples per scale, seed {args.seed}")
    print("scale,IS,FD,sFD,precision,recall,acc_vs_label,seconds,cpu_seconds", flush=True)
    for scale in [float(v) for v in args.scales.split(",")]:
        t0, c0 = time.time(), time.process_time()
        request = digits_request(scale, args.num_samples, args.seed, timestep_respacing=settings["timestep_respacing"],
                                 weights_dir=args.weights_dir)
        fn = adm_batches(request, torch.device("cpu"), unet.module, unet.diffusion, cls.module if scale else None)
        parts = [fn(range(s, min(s + 500, args.num_samples))) for s in range(0, args.num_samples, 500)]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
        is_, fd, sfd, prec, rec, acc = score(images, labels)
        print(f"{scale:g},{is_:.3f},{fd:.3f},{sfd:.3f},{prec:.3f},{rec:.3f},{acc:.3f},{seconds:.1f},{cpu_seconds:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["features", "diffusion", "classifier", "biggan", "all", "verify", "verify-biggan"],
                        help="which model to train, or which tradeoff to verify")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out-dir", type=Path, default=DATA, help="where the weight files go")
    parser.add_argument("--diffusion-steps", type=int, default=None, help="optimizer steps for the UNet")
    parser.add_argument("--classifier-steps", type=int, default=None, help="optimizer steps for the classifier")
    parser.add_argument("--biggan-steps", type=int, default=None, help="generator steps for the BigGAN")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--num-samples", type=int, default=500, help="verify: samples per guidance scale")
    parser.add_argument("--scales", default="0,1,2,4,8", help="verify: comma-separated guidance scales")
    parser.add_argument("--truncations", default="0.2,0.4,0.6,0.8,1.0",
                        help="verify-biggan: comma-separated truncations")
    parser.add_argument("--respacing", default=None, help="verify: timestep respacing (default: the preset's)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="verify, verify-biggan: read digits8_*.pt (and the BigGAN config) from here instead of the "
                             "bundled files (no sha256 check)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    todo = ["features", "diffusion", "classifier", "biggan"] if args.what == "all" else [args.what]
    if args.what == "verify":
        verify(args)
        return
    if args.what == "verify-biggan":
        verify_biggan(args)
        return

    if "features" in todo:
        from evalkit.demo.train import train_feature_net
        from evalkit.features.digits import WEIGHTS_FILE

        t0 = time.time()
        net, info = train_feature_net(seed=args.seed)
        _save(net.state_dict(), args.out_dir / WEIGHTS_FILE, info, t0)
    if "diffusion" in todo:
        from evalkit.demo.models import DIFFUSION_WEIGHTS
        from evalkit.demo.train import train_diffusion

        t0 = time.time()
        kw = {} if args.diffusion_steps is None else {"steps": args.diffusion_steps}
        model, info = train_diffusion(seed=args.seed, **kw)
        _save(model.state_dict(), args.out_dir / DIFFUSION_WEIGHTS, info, t0)
    if "classifier" in todo:
        from evalkit.demo.models import CLASSIFIER_WEIGHTS
        from evalkit.demo.train import train_classifier

        t0 = time.time()
        kw = {} if args.classifier_steps is None else {"steps": args.classifier_steps}
        model, info = train_classifier(seed=args.seed, **kw)
        _save(model.state_dict(), args.out_dir / CLASSIFIER_WEIGHTS, info, t0)
    if "biggan" in todo:
        from evalkit.atomic import atomic_write_text
        from evalkit.demo.train_gan import train_biggan
        from evalkit.presets import get_biggan_preset
        from evalkit.weights import sha256_file

        preset = get_biggan_preset("digits8_biggan")
        t0 = time.time()
        kw = {} if args.biggan_steps is None else {"steps": args.biggan_steps}
        model, info = train_biggan(seed=args.seed, **kw)
        config_path = args.out_dir / preset.config
        atomic_write_text(config_path, json.dumps(model.config.to_dict(), indent=2) + "\n")
        print(config_path, "sha256", sha256_file(config_path), flush=True)
        _save(model.state_dict(), args.out_dir / preset.weights, info, t0)


if __name__ == "__main__":
    main()
