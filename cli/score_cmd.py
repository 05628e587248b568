"""``cnnvis score``: which units are worth a look (the Machine Interpretability Score, cnnvis.atlas.scores)."""

from __future__ import annotations

import json
import os

import click

from .app import main
from .options import (device_option, finite_float, json_option, layer_option, model_options, progress_bar,
                      quiet_option, seed_option)
from cnnvis.core.errors import BadImageError
from cnnvis.core.files import write_json
from cnnvis.core.io import safe_name
from cnnvis.atlas.interpret import interpretability, SCORES_FILE
from cnnvis.atlas.scores import ScoreSettings
from cnnvis.atlas.similarity import LARGEST, Similarity, default_similarity

EXAMPLES = """\b
Examples:
  cnnvis score efficientnet-lite0 -l conv_head --no-pictures      # natural references only: seconds
  cnnvis score efficientnet-lite0                                 # the gallery's units, both scores
  cnnvis score efficientnet-lite0 -l blocks.5.depthwise_conv --filters all --no-pictures --json > scores.json
  cnnvis score resnet18 --weights none -l layer4.1.conv2 --images photos/ --skip-bad
  cnnvis score efficientnet-lite1 --similarity efficientnet-lite0  # (the default when Lite1 is inspected)
"""


def _fmt(score: dict) -> str:
    return f"{score['mis']:.3f}" if score["mis"] is not None else "-"


@main.command(epilog=EXAMPLES)
@model_options
@layer_option(help="layers to score (names, globs, type:NAME); default: the gallery's layers.")
@click.option("--filters", default="16", show_default=True, metavar="N|SPEC",
              help="the first N filters of each layer (the gallery's units), or a spec like 0-31, 3,7,9 or all.")
@click.option("--images", multiple=True, type=click.Path(exists=True), metavar="DIR",
              help="image files/folders for the queries and natural references [default: the crops of the "
              "bundled photographs the gallery uses].")
@click.option("--skip-bad", is_flag=True, help="skip image files that cannot be read (and say so) instead of stopping.")
@click.option("--pictures/--no-pictures", default=True, show_default=True,
              help="also score the unit's pictures as references (synthetic MIS): the positive and negative "
              "pictures missing in the output folder are made there, as the gallery makes them.")
@click.option("--similarity", default=None, metavar="MODEL",
              help="the similarity model (any MODEL spec) [default: efficientnet-lite1, or efficientnet-lite0 when "
              "Lite1 is inspected].")
@click.option("--similarity-size", default=LARGEST, show_default=True, type=click.IntRange(min=32), metavar="PX",
              help="largest side an image is embedded at (crops of small receptive fields are embedded near "
              "their own size).")
@click.option("--k", "k", default=ScoreSettings.k, show_default=True, type=click.IntRange(min=1),
              help="references per side in each task.")
@click.option("--tasks", default=ScoreSettings.tasks, show_default=True, type=click.IntRange(min=1),
              help="tasks per unit (N).")
@click.option("--quantile", default=ScoreSettings.quantile, show_default=True,
              type=finite_float(0, 0.5, min_open=True), help="share of the images in each pool (strong, weak).")
@click.option("--alpha", default=ScoreSettings.alpha, show_default=True, type=finite_float(0, min_open=True),
              help="temperature of the choice: P(right) = sigmoid(d / alpha).")
@click.option("-o", "--output", type=click.Path(file_okay=False), metavar="DIR",
              help="folder of the pictures and scores.json  [default: cnnvis-gallery/<model>, the gallery's]")
@seed_option
@device_option
@json_option
@quiet_option
def score(model, layers, filters, images, skip_bad, pictures, similarity, similarity_size, k, tasks, quantile, alpha,
          output, seed, device, as_json, quiet):
    """Score how interpretable each unit of MODEL is: the Machine Interpretability Score (MIS).

    \b
    Zimmermann, Klindt & Brendel (NeurIPS 2024), https://arxiv.org/abs/2405.13808: in each of N
    tasks a similarity model sees K strongly and K weakly activating reference images of the unit
    and must tell a strongly from a weakly activating query; MIS is its mean probability of being
    right (0.5: chance, 1: always right). Natural MIS takes the references from the image set;
    synthetic MIS lets the unit's positive and negative pictures stand in for them.

    Writes DIR/scores.json (the schema is in the README) and prints each layer's units, the most
    interpretable first. A unit that responds the same to every image is reported undefined, with
    the reason.
    """
    lm = model.load()
    output = output or os.path.join("cnnvis-gallery", safe_name(lm.name))
    settings = ScoreSettings(k=k, tasks=tasks, quantile=quantile, alpha=alpha, seed=seed)
    sim = Similarity(similarity or default_similarity(lm), device=lm.device, largest=similarity_size)
    state = {}  # the bar, made when the first progress call tells how many units there are

    def progress(done, total):
        if "bar" not in state:
            state["bar"] = progress_bar(int(total), quiet or as_json, f"scoring {int(total)} units")
            if state["bar"] is not None:
                state["bar"].__enter__()
        if state["bar"] is not None:
            state["bar"].update(int(done) - state["bar"].pos)

    def log(line):
        if not quiet and state.get("bar") is None:
            click.echo(line, err=True)

    try:
        result = interpretability(lm, layers, filters, images=images, similarity=sim,
                                  pictures=output if pictures else None, settings=settings, skip_bad=skip_bad,
                                  progress=progress, log=log)
    except BadImageError as exc:
        raise exc.with_advice("remove it or use --skip-bad") from None
    finally:
        if state.get("bar") is not None:
            state["bar"].__exit__(None, None, None)
    data = result.to_dict()
    path = write_json(data, os.path.join(output, SCORES_FILE))
    for p, why in result.skipped:
        click.echo(f"skipped: {why}", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{lm.name}: MIS of {len(result.units)} units on {result.images} images "
               f"(similarity: {sim.name}; K={k}, N={tasks}, quantile {quantile}, alpha {alpha}; 0.5 = chance)")
    for name, row in data["layers"].items():
        med = (f"median natural {row['natural_median']:.3f}" if row["natural_median"] is not None
               else "no natural score") + (f", synthetic {row['synthetic_median']:.3f}"
                                           if row["synthetic_median"] is not None else "")
        click.echo(f"\n{name}: {med}")
        mine = sorted((u for u in data["units"] if u["layer"] == name),
                      key=lambda u: (u["natural"]["mis"] is None, -(u["natural"]["mis"] or 0), u["filter"]))
        click.echo(f"  {'unit':>6}  {'natural':>7}  {'synthetic':>9}")
        for u in mine:
            why = u["natural"]["reason"] or (u["synthetic"]["reason"] if pictures else None)
            click.echo(f"  {u['filter']:>6}  {_fmt(u['natural']):>7}  {_fmt(u['synthetic']):>9}"
                       + (f"  ({why})" if why else ""))
    click.echo(f"\n-> {path}")
