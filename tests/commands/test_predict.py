"""``natix-miner predict``: a table per image, or one JSON object per image with the agreed keys."""

import json

import pytest
import yaml

from natix_miner.cli import main as cli_main
from tests.support.engine_experts import grey_png, register

register()


@pytest.fixture()
def setup(tmp_path):
    prof = {"name": "cli", "escalation": {"low": 0.3, "high": 0.7},
            "experts": [{"name": "bright", "family": "engine_test_brightness"},
                        {"name": "dark", "family": "engine_test_brightness", "options": {"invert": True}},
                        {"name": "bad", "family": "engine_test_flaky"}],
            "tiers": [{"name": "fast", "experts": ["bright"]}, {"name": "second", "experts": ["dark", "bad"]}]}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(prof))
    images = {}
    for name, v in (("light.png", 230), ("grey.png", 128)):
        images[name] = tmp_path / name
        images[name].write_bytes(grey_png(v))
    images["junk.jpg"] = tmp_path / "junk.jpg"
    images["junk.jpg"].write_bytes(b"\xff\xd8 not really a jpeg")
    return path, images


def test_json_lines(setup, capsys):
    path, images = setup
    files = [str(images[n]) for n in ("light.png", "grey.png", "junk.jpg")]
    assert cli_main(["predict", *files, "--profile", str(path), "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["path"] for o in out] == files
    light, grey, junk = out
    assert light["tiers"] == ["fast"] and light["experts"] == {"bright": pytest.approx(230 / 255)}
    assert light["probability"] == pytest.approx(230 / 255)
    assert grey["tiers"] == ["fast", "second"] and set(grey["experts"]) == {"bright", "dark"}
    assert grey["skipped"] == {"bad": "error:RuntimeError"}
    assert junk["probability"] == 0.49 and junk["fallback"] and junk["fallback_reason"].startswith("bad_image:")
    assert junk["tiers"] == [] and junk["experts"] == {}


def test_table(setup, capsys):
    path, images = setup
    assert cli_main(["predict", str(images["grey.png"]), str(images["junk.jpg"]), "--profile", str(path)]) == 0
    out = capsys.readouterr().out
    first, *rows = out.split(str(images["junk.jpg"]))[0].strip().splitlines()
    assert "P(roadwork)=" in first and "tiers: fast -> second" in first
    cells = [r.split() for r in rows]
    assert cells[0] == ["tier", "expert", "P", "note"]
    assert cells[1][:3] == ["fast", "bright", f"{128 / 255:.3f}"]
    assert cells[2][:3] == ["second", "dark", f"{1 - 128 / 255:.3f}"]
    assert cells[3] == ["second", "bad", "-", "error:RuntimeError"]
    assert "fallback: bad_image:" in out


def test_unreadable_path_and_bad_profile(setup, tmp_path, capsys):
    path, images = setup
    assert cli_main(["predict", str(tmp_path / "missing.jpg"), "--profile", str(path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nexperts: []\ntiers: []\n")
    assert cli_main(["predict", str(images["grey.png"]), "--profile", str(bad)]) == 1
    assert "experts: List should have at least 1 item" in capsys.readouterr().err
