"""The README's Python examples run as written, in order, and print what their comments say."""

import ast
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path):
    """The ```python blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _literal(text: str):
    try:
        return True, ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return False, None


def _expression(text: str) -> bool:
    try:
        ast.parse(text.strip(), mode="eval")
        return bool(text.strip())
    except SyntaxError:
        return False


def expected_values(block: str):
    """(expression, value) for each expression whose comment, on its line or alone on the next, is only a literal."""
    lines = block.splitlines()
    out = []
    for line, after in zip(lines, lines[1:] + [""]):
        code, _, comment = line.partition("  # ")
        if line.startswith("#") or not _expression(code):
            continue
        for text in (comment, after[2:] if after.startswith("# ") else ""):
            ok, value = _literal(text) if text else (False, None)
            if ok:
                out.append((code.strip(), value))
    return out


def _images(folder: Path):
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_digits

    digits = load_digits()
    def digit(i):
        return Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32))
    digit(0).save(folder / "digit.png")
    digit(int(np.flatnonzero(digits.target == 7)[0])).save(folder / "seven.png")
    (folder / "digits").mkdir()
    for i in range(6):
        digit(i).save(folder / "digits" / f"{i}.png")
    Image.fromarray(data.chelsea()).save(folder / "cat.jpg")


def test_the_python_blocks_are_found_and_their_expected_values_parsed():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 6 and blocks[0].startswith("import torch\nimport cnnvis\n")
    assert ("[(f.name, f.size, f.jump) for f in cnnvis.receptive_fields(lm, \"type:Conv2d\")]",
            [("conv1", (5, 5), (1, 1)), ("conv2", (14, 14), (2, 2))]) in expected_values("\n".join(blocks))


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path, monkeypatch):
    _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    torch.manual_seed(0)
    checked = 0
    for block in python_blocks(ROOT / "README.md"):
        exec(compile(block, "README.md", "exec"), namespace)
        for expression, value in expected_values(block):
            assert eval(expression, namespace) == value, expression
            checked += 1
    assert checked >= 2
    # what the comments promise about shapes and results
    assert tuple(namespace["conv2"].shape) == (8, 16, 10, 10)
    assert namespace["out"].images.shape[0] == 8 and len(namespace["out"].records) == 8
    assert namespace["summary"].computed > 0
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "out" / "filters").is_dir()
    merged = namespace["shard_a"].merge(namespace["shard_b"]).to_dict()["conv1"]
    assert merged["count"] == 2
    assert os.path.isfile(tmp_path / "out" / "manifest.json")


def _keys(value):
    """The nested keys of a JSON value (lists: their first item's), as sorted tuples of paths."""
    out = set()

    def walk(v, path):
        if isinstance(v, dict):
            for k, item in v.items():
                out.add(path + (k,))
                walk(item, path + ("*" if path and path[-1] in ("layers",) else k,))
        elif isinstance(v, list) and v:
            walk(v[0], path + ("[]",))

    walk(value, ())
    return out


def test_the_scores_json_schema_in_the_readme_is_what_cnnvis_writes(tmp_path):
    import json

    import cnnvis

    text = (ROOT / "README.md").read_text().split("## Interpretability scores", 1)[1]
    documented = json.loads(re.search(r"^```json\n(.*?)^```", text, flags=re.S | re.M).group(1).replace("null", "null"))
    sim = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    written = cnnvis.interpretability("lenet-digits", ["conv1"], 1, similarity=sim, pictures=str(tmp_path),
                                      settings=cnnvis.ScoreSettings(tasks=3)).to_dict()
    written["skipped"] = [{"path": "x", "why": "y"}]  # the sample has no files to skip
    layer = next(iter(written["layers"]))
    written["layers"] = {"conv_head": written["layers"][layer]}
    assert _keys(documented) == _keys(written)
