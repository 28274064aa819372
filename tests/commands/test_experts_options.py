"""``natix-miner experts options FAMILY``, the generated options reference in docs/experts.md, and
``profile validate`` refusing bad options and dtypes by key."""

import json
from pathlib import Path

import yaml

from natix_miner.cli import main as cli_main
from natix_miner.commands.experts import DOCS_END, docs_block, render_docs
from natix_miner.config import CONFIG_DIR
from tests.support.paths import REPO_ROOT

DOC = Path(REPO_ROOT) / "docs" / "experts.md"


def test_options_table_lists_every_key_with_type_default_and_doc(capsys):
    assert cli_main(["experts", "options", "timm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("family timm: dtypes float32, float16, bfloat16, auto; auto = float32; CPU: every dtype "
                          "runs float32; needs timm")
    row = next(line for line in out.splitlines() if line.startswith("decode "))
    assert row.split() == ["decode", "gpu", "|", "cpu", "|", "hw", "'gpu'"]
    assert "Bulk path: ``hw`` (the card's JPEG engines" in out


def test_options_json_flattens_nested_sections(capsys):
    assert cli_main(["experts", "options", "vllm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in data["options"]}
    assert data["family"] == "vllm" and "fp8" in data["dtypes"]
    assert rows["engine.max_model_len"]["default"] == "4096" and rows["engine.max_model_len"]["type"] == "int"
    assert rows["thinking.mode"]["type"] == "off | band | always"
    assert all(r["doc"] for r in data["options"])


def test_unknown_family_is_one_error_line_with_the_nearest_name(capsys):
    assert cli_main(["experts", "options", "timn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown family 'timn'. Did you mean 'timm'? Known: chaos,") and "\n" not in err


def test_docs_options_reference_is_generated_from_the_schemas():
    text = DOC.read_text()
    assert render_docs(text) == text, "docs/experts.md is stale: run python scripts/gen_expert_docs.py"
    block = docs_block()
    assert "### `timm`" in block and "| `decode` | gpu \\| cpu \\| hw | `'gpu'` |" in block
    assert block.endswith(DOCS_END)


def _bad_demo(tmp_path, **expert0):
    data = yaml.safe_load((CONFIG_DIR / "demo-cpu.yaml").read_text())
    e = data["experts"][0]
    e["options"].update(expert0.pop("options", {}))
    e.update(expert0)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, e["name"]


def test_validate_refuses_bad_options_naming_expert_and_key(tmp_path, capsys):
    path, name = _bad_demo(tmp_path, options={"decode": "bogus", "nonsense_key": 7})
    assert cli_main(["profile", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"bad.yaml: experts.0({name}).options.decode: Input should be 'gpu', 'cpu' or 'hw' (got 'bogus')" in err
    assert f"bad.yaml: experts.0({name}).options.nonsense_key: 'nonsense_key' is not an option of family 'timm'." in err
    assert "Traceback" not in err


def test_validate_refuses_a_dtype_the_family_cannot_run(tmp_path, capsys):
    path, name = _bad_demo(tmp_path, dtype="fp8")
    assert cli_main(["profile", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert (f"experts.0({name}).dtype: dtype 'fp8' is not supported by family 'timm' "
            "(use float32, float16, bfloat16, auto; auto = float32)") in err


def test_every_shipped_profile_still_validates(capsys):
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        assert cli_main(["profile", "validate", str(path)]) == 0, capsys.readouterr().err
