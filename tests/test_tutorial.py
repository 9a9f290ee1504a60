"""docs/tutorial.md runs: its ```python blocks, in order, in one namespace, in quick mode."""

import re

from helpers import REPO, readable_png


def test_the_tutorial_runs(data_dir, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "docs" / "tutorial.md").read_text(), re.M | re.S)
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_VAE_QUICK", "1")
    monkeypatch.setenv("PYRO_VAE_DATA", data_dir)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/tutorial.md, python block {i + 1}", "exec"), namespace)
    assert namespace["quick"] and namespace["summary"]["active_units"] >= 0
    for name in ("runs/vae/latent_map.png", "runs/vae/traversals.png", "runs/sevens.png"):
        assert readable_png(tmp_path / name), name
    assert "log p(x) =" in capsys.readouterr().out
