"""Pictures shown inline in notebooks: a grid as PNG bytes, or as HTML with a caption under each picture.

Result objects (:class:`cnnvis.synthesis.Maximization`, the techniques' results) define
``_repr_png_`` / ``_repr_html_`` with these, so ``cnnvis.maximize(...)`` as the last line of a
Jupyter cell shows its pictures. The HTML embeds each picture as a ``data:`` URI (no files, no
network) and escapes every caption.

Example:
    >>> import torch
    >>> grid_png([torch.zeros(3, 4, 4)])[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    >>> "&lt;b&gt;" in grid_html([torch.zeros(1, 2, 2)], ["<b>"])
    True
"""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import torch
from cnnvis.core.io import make_grid, to_uint8, zoom


def png_bytes(image: torch.Tensor) -> bytes:
    """One C x H x W image in [0, 1] as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def _zoom(image: torch.Tensor, target: int = 128) -> torch.Tensor:
    """Small pictures enlarged by whole pixels (so a 32 px digit is visible), big ones kept."""
    factor = max(1, target // max(image.shape[-2:]))
    return zoom(image, factor) if factor > 1 else image


def grid_png(images: Sequence[torch.Tensor], ncol: int = 8) -> bytes:
    """Equally sized pictures tiled (at most ``ncol`` per row), as PNG bytes."""
    tiles = [_zoom(im.detach().cpu().float()) for im in images]
    return png_bytes(make_grid(tiles, ncol=min(ncol, len(tiles)), pad=2))


def grid_html(images: Sequence[torch.Tensor], labels: Sequence[str], size: int = 128) -> str:
    """Pictures in a wrapping row, each with its (escaped) caption under it."""
    cells = []
    for image, label in zip(images, labels):
        data = base64.b64encode(png_bytes(_zoom(image.detach().cpu().float()))).decode("ascii")
        cells.append(
            f'<figure style="margin:4px;display:inline-block;text-align:center">'
            f'<img src="data:image/png;base64,{data}" width="{size}" style="image-rendering:pixelated" '
            f'alt="{html.escape(label, quote=True)}"><figcaption style="font-size:12px">{html.escape(label)}'
            f"</figcaption></figure>"
        )
    return '<div style="display:flex;flex-wrap:wrap">' + "".join(cells) + "</div>"
