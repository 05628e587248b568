"""Commands on output folders' records: ``export`` and ``merge``."""

from __future__ import annotations

import os

import click

from .app import main
from cnnvis.atlas.store import DATABASE, MANIFEST, merge_folders, Store
from cnnvis.core.errors import InputError
from cnnvis.gallery.render import render_site


@main.command(epilog="\b\nExamples:\n  cnnvis export cnnvis-gallery/efficientnet-lite0\n  cnnvis export out/maximize")
@click.argument("folder", type=click.Path(file_okay=False))
def export(folder):
    """Write FOLDER/manifest.json from FOLDER's record database.

    Every run writes manifest.json when it ends; this writes it again (after a run was killed, say).
    It holds every record and the other sections, as Store(FOLDER).read() returns them.
    """
    if not os.path.isfile(os.path.join(folder, DATABASE)) and not os.path.isfile(os.path.join(folder, MANIFEST)):
        raise InputError(f"{folder} holds no cnnvis records ({DATABASE} or {MANIFEST}); give the folder a "
                         f"maximize, gallery or technique wrote")
    store = Store(folder)
    path = store.export()
    click.echo(f"{len(store.records())} record(s) exported to {path}")


@main.command(epilog="\b\nExamples:\n  cnnvis merge site node0/site node1/site      # each node wrote its own folder\n"
              "  cnnvis merge out/all out/a out/b")
@click.argument("destination", type=click.Path(file_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="take a source's file where it differs from the destination's.")
def merge(destination, sources, force):
    """Merge output folders written apart (one per node or shard) into DESTINATION, and render it.

    Copies every file, upserts every record by (layer, unit, variant), merges a gallery's layers
    and units, then writes DESTINATION/manifest.json and, for a gallery, its pages. Use it where
    the folder cannot be shared while writing (SQLite's locks do not hold on network file
    systems): give each node its own folder with --shard i/n, then merge them.
    """
    records, copied = merge_folders(destination, sources, force=force)
    store = Store(destination)
    manifest = store.commit(export=True)
    pages = len(render_site(destination, manifest)) if manifest.get("gallery") else 0
    click.echo(f"{records} record(s) and {copied} file(s) from {len(sources)} folder(s) merged into {destination}"
               + (f"; {pages} page(s) written -> {os.path.join(destination, 'index.html')}" if pages else ""))
