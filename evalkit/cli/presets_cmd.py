"""`evalkit presets [NAME]`: the known models (released guided-diffusion checkpoints, BigGAN-deep
generators and registered extras) with their architecture, parameter count and the paper's sampling
settings (a BigGAN-deep preset's: its default truncation sweep)."""

from __future__ import annotations

import json
import math

import click

from evalkit.cli.group import main
from evalkit.presets import BIGGAN_PRESETS, PRESETS, describe_preset, get_biggan_preset, get_preset


def describe_biggan(name: str) -> dict:
    """A JSON-ready description of BigGAN preset `name`, with its parameter count when its config is
    known (bundled or cached file, else the canonical BigGAN-deep config of its resolution)."""
    from dataclasses import asdict

    from evalkit.models.biggan import DEEP_CHANNEL_MULTIPLIERS, BigGANConfig, state_signature
    from evalkit.sampling.biggan import _preset_config

    p = get_biggan_preset(name)
    cfg_path = _preset_config(p)
    if cfg_path is not None:
        cfg = BigGANConfig.from_json(cfg_path)
    elif p.image_size in DEEP_CHANNEL_MULTIPLIERS:
        cfg = BigGANConfig.deep(p.image_size, z_dim=p.dim_z, num_classes=p.num_classes)
    else:
        cfg = None
    params = None
    if cfg is not None:  # the stored spectral-norm vectors and batch-norm statistics are not parameters
        params = sum(math.prod(shape) for key, shape in state_signature(cfg).items()
                     if not key.endswith(("weight_u", "weight_v", "running_means", "running_vars")))
    info = asdict(p)
    info.update(kind=p.kind, resolution=p.resolution, num_params=params, truncations=list(p.truncations),
                config_file=None if cfg_path is None else str(cfg_path))
    return info


def _sampling(info: dict) -> str:
    if info["kind"] == "biggan-deep":
        t = info["truncations"]
        return f"truncation sweep {t[0]:g} to {t[-1]:g} ({len(t)} values), default --truncation 1"
    s = info["sampling"]
    if info["kind"] == "classifier":
        return "-"
    steps = f"{'ddim ' if s['use_ddim'] else ''}{s['timestep_respacing'] or 'all'} steps"
    if s["classifier"]:
        steps += f", guided by {s['classifier']} at scale {s['classifier_scale']:g}"
    if s["base"]:
        steps += f", upsamples {s['base']}"
    return steps


def _table(rows: list[dict]) -> str:
    head = ("name", "kind", "resolution", "params", "sampling (paper)")
    body = [(r["name"], r["kind"], r["resolution"],
             "-" if r["num_params"] is None else f"{r['num_params'] / 1e6:.1f}M", _sampling(r)) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line[:4], widths)) + "  " + line[4]
                     for line in [head, *body])


def _detail_biggan(info: dict) -> str:
    rows = [("name", info["name"]), ("kind", info["kind"]), ("resolution", info["resolution"]),
            ("classes", str(info["num_classes"])), ("z_dim", str(info["dim_z"])), ("dataset", info["dataset"] or "-"),
            ("parameters", "-" if info["num_params"] is None else f"{info['num_params']:,}"),
            ("sampling", _sampling(info)), ("truncations", ", ".join(f"{t:g}" for t in info["truncations"])),
            ("weights", info["weights"] + (" (bundled)" if info["bundled"] else
                                           f" (`evalkit weights fetch {info['weights']}`)")),
            ("config", info["config_file"] or info["config"]), ("sha256", info["sha256"] or "not published"),
            ("about", info["description"] or "-")]
    return "\n".join(f"{k + ':':<12} {v}" for k, v in rows)


def _detail(info: dict) -> str:
    if info["kind"] == "biggan-deep":
        return _detail_biggan(info)
    res = ", ".join(f"{k} {v:g}" for k, v in info["paper_results"].items()) or "none published"
    rows = [("name", info["name"]), ("kind", info["kind"]), ("resolution", info["resolution"]),
            ("class cond", str(info["class_cond"])), ("dataset", info["dataset"] or "-"),
            ("parameters", f"{info['num_params']:,}"), ("sampling", _sampling(info)),
            ("diffusion", ", ".join(f"{k}={v!r}" for k, v in info["diffusion"].items()) or "-"),
            ("paper", res), ("url", info["url"] or "-"), ("sha256", info["sha256"] or "not published"),
            ("weights", info["weights"] or "-"), ("about", info["description"] or "-"),
            ("flags", info["readme_flags"])]
    text = "\n".join(f"{k + ':':<12} {v}" for k, v in rows)
    return text + "\nresolved:\n" + "\n".join(f"  --{k} {v if v != '' else chr(34) * 2}" for k, v in info["flags"].items())


@main.command("presets")
@click.argument("name", metavar="[NAME]", required=False)
@click.option("--json", "as_json", is_flag=True, default=False, show_default=True,
              help="Print JSON instead of aligned text.")
def presets_cmd(name: str | None, as_json: bool) -> None:
    """List the model presets (name, kind, resolution, parameters, the paper's sampling settings), or
    show preset NAME in full: reference flags, diffusion settings, URL, checksum and paper numbers.

    \b
    Examples:
      evalkit presets
      evalkit presets 64x64_diffusion
      evalkit presets 256x256_classifier --json
      evalkit presets biggan-deep-128
    """
    from evalkit.models import preset_num_params  # torch: imported when the command runs

    if name and name in BIGGAN_PRESETS:
        infos = [describe_biggan(name)]
    else:
        names = [get_preset(name).name] if name else list(PRESETS)
        infos = []
        for n in names:
            info = describe_preset(n)
            info["num_params"] = preset_num_params(n)
            infos.append(info)
        if not name:
            infos += [describe_biggan(n) for n in BIGGAN_PRESETS]
    if as_json:
        click.echo(json.dumps(infos[0] if name else infos, indent=2))
    else:
        click.echo(_detail(infos[0]) if name else _table(infos))
