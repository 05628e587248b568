"""Commands on an output folder's records: ``export``."""

from __future__ import annotations

import os

import click

from .app import main
from cnnvis.atlas.store import DATABASE, MANIFEST, Store
from cnnvis.core.errors import InputError


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
