"""`evalkit presets [NAME]`: the known models (released guided-diffusion checkpoints and registered
extras) with their architecture, parameter count and the paper's sampling settings."""

from __future__ import annotations

import json

import click

from evalkit.cli.group import main
from evalkit.presets import PRESETS, describe_preset, get_preset


def _sampling(info: dict) -> str:
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
    body = [(r["name"], r["kind"], r["resolution"], f"{r['num_params'] / 1e6:.1f}M", _sampling(r)) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line[:4], widths)) + "  " + line[4]
                     for line in [head, *body])


def _detail(info: dict) -> str:
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
    """
    from evalkit.models import preset_num_params  # torch: imported when the command runs

    names = [get_preset(name).name] if name else list(PRESETS)
    infos = []
    for n in names:
        info = describe_preset(n)
        info["num_params"] = preset_num_params(n)
        infos.append(info)
    if as_json:
        click.echo(json.dumps(infos[0] if name else infos, indent=2))
    else:
        click.echo(_detail(infos[0]) if name else _table(infos))
