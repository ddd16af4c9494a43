"""`evalkit demo`: sweep ADM guidance and BigGAN-deep truncation, score, report — offline on the bundled digits."""

from __future__ import annotations

import os
from pathlib import Path

import click

from evalkit.cli.group import main


@main.command("demo")
@click.option("--out", default="reports/demo", show_default=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Output folder (new, empty, or an earlier demo folder, which is replaced).")
@click.option("--num-samples", type=click.IntRange(min=4), default=None, metavar="N",
              help="Samples per guidance scale and per truncation (fewer than ~500 make the precision rise "
                   "unreliable).  [default: 500; 200 with --quick]")
@click.option("--scales", default=None, metavar="S,S,...",
              help="Comma-separated guidance scales (0 = unguided).  [default: 0,0.5,1,2,4,8; 0,8 with --quick]")
@click.option("--truncations", default=None, metavar="T,T,...",
              help="Comma-separated BigGAN-deep truncations in (0, 1].  [default: 0.2,0.4,0.6,0.8,1; 0.2,1 with "
                   "--quick]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="SEED",
              help="Seed of the per-sample noise generators (sample i draws its label and noise from (SEED, i)).")
@click.option("--quick", is_flag=True, default=False, show_default=True,
              help="200 samples at scales 0 and 8 and truncations 0.2 and 1 only (for CI).")
@click.option("--device", default="cpu", show_default=True, metavar="DEVICE",
              help="Where to sample and score: cpu, cuda, cuda:N, auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True, metavar="N",
              help="Samples per sampling batch (does not change the images).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def demo_cmd(out: str, num_samples: int | None, scales: str | None, truncations: str | None, seed: int,
             quick: bool, device: str, batch_size: int, progress: bool) -> None:
    """Run the whole evalkit pipeline offline on the bundled 8×8 handwritten digits, with the small trained
    models shipped in the package: build the reference batch (`evalkit ref build`), then two sweeps into
    one results.csv (`evalkit sweep`): the ADM diffusion model with classifier guidance at every scale
    (0, 0.5, 1, 2, 4, 8 unless --scales says otherwise) and the BigGAN-deep baseline at every truncation
    (0.2, 0.4, 0.6, 0.8, 1 unless --truncations says otherwise). Writes the tradeoff report (`evalkit
    report`: FD vs IS and precision vs recall with one curve per family, ADM points labelled by guidance
    scale, BigGAN-deep points by truncation; tables), samples.png (a row of samples per scale and per
    truncation) and a README saying, for both families, whether IS and precision rise and recall falls
    toward fidelity (a larger scale, a smaller truncation) — the guidance-vs-truncation comparison of
    Dhariwal & Nichol 2021. A few minutes on 2 CPU cores; --quick for a faster check.

    \b
    Examples:
      evalkit demo
      evalkit demo --quick --out /tmp/demo
      evalkit demo --scales 0,1,4,16 --truncations 0.1,0.5,1 --num-samples 1000 --out my_demo
    """
    from evalkit.context import Context  # heavy imports after option parsing
    from evalkit.demo.run import run_demo

    parts = ["evalkit demo"]
    if out != "reports/demo":
        parts.append(f"--out {out}")
    if num_samples is not None:
        parts.append(f"--num-samples {num_samples}")
    if scales is not None:
        parts.append(f"--scales {scales}")
    if truncations is not None:
        parts.append(f"--truncations {truncations}")
    if seed:
        parts.append(f"--seed {seed}")
    if quick:
        parts.append("--quick")
    with Context.create(device) as ctx:
        result = run_demo(out, num_samples=num_samples, scales=scales, truncations=truncations, quick=quick,
                          seed=seed, batch_size=batch_size, progress=progress, command=" ".join(parts), ctx=ctx)

    def said(checks: dict[str, bool]) -> str:
        return (f"IS {'rises' if checks['is_up'] else 'does NOT rise'}, precision "
                f"{'rises' if checks['precision_up'] else 'does NOT rise'}, recall "
                f"{'falls' if checks['recall_down'] else 'does NOT fall'}")

    click.echo(f"demo finished in {result.seconds:.0f} s; guidance scale up: {said(result.tradeoff)}; "
               f"truncation down: {said(result.gan_tradeoff)}")
    here = Path(os.getcwd())
    for label, path in (("summary", result.readme), ("results", result.results_csv),
                        ("report", result.report_dir / "README.md"),
                        ("plots", result.report_dir / "fid_vs_is.png"),
                        ("", result.report_dir / "precision_vs_recall.png"),
                        ("samples", result.samples_png), ("reference", result.reference)):
        shown = os.path.relpath(path, here) if not Path(out).is_absolute() else str(path)
        click.echo(f"  {label:<10} {shown}")
