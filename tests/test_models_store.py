"""The local model store: manifests, hashing, verification, resolution order, offline errors, CLI."""

import json
import os
import time

import pytest

from natix_miner import cli
from natix_miner.config import REPO_ROOT
from natix_miner.experts import FAMILIES
from natix_miner.models_store import Manifest, ModelStore, ModelUnavailable, resolve_model_ref


def make_model_dir(path, payload=b"weights"):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "vit"}')
    (path / "model.safetensors").write_bytes(payload * 1000)
    (path / "sub").mkdir()
    (path / "sub" / "vocab.txt").write_text("a\nb\n")
    (path / ".cache").mkdir()  # download caches are not part of a model
    (path / ".cache" / "x.lock").write_text("")
    return path


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NATIX_MODEL_DIR", str(tmp_path / "store"))
    return ModelStore()


@pytest.mark.parametrize("mode", ["copy", "link", "in-place"])
def test_add_hashes_and_verifies(tmp_path, store, mode):
    src = make_model_dir(tmp_path / "src")
    m = store.add("tiny", str(src), family="hf_classifier", mode=mode, hub_id="org/tiny", licence="mit")
    assert sorted(m.files) == ["config.json", "model.safetensors", "sub/vocab.txt"]
    assert m.files["model.safetensors"].size == 7000 and m.size_bytes == 7000 + 21 + 4
    import hashlib

    assert m.files["config.json"].sha256 == hashlib.sha256(b'{"model_type": "vit"}').hexdigest()
    saved = json.loads((tmp_path / "store" / "manifests" / "tiny.json").read_text())
    assert saved["hub_id"] == "org/tiny" and saved["family"] == "hf_classifier"
    assert store.verify("tiny", show_progress=False) == []
    path = resolve_model_ref("tiny")
    assert os.path.isfile(os.path.join(path, "config.json"))
    if mode == "in-place":
        assert path == str(src)
    else:
        assert path == str(tmp_path / "store" / "weights" / "tiny")
    with pytest.raises(ValueError, match="already has a manifest"):
        store.add("tiny", str(src), family="hf_classifier", mode=mode)


def test_corruption_and_missing_files_are_reported(tmp_path, store):
    store.add("tiny", str(make_model_dir(tmp_path / "src")), family="timm")
    weights = tmp_path / "store" / "weights" / "tiny" / "model.safetensors"
    weights.write_bytes(b"X" * 7000)  # same size, different bytes: only hashing finds it
    assert store.status(store.get("tiny"))[0] is True
    problems = store.verify("tiny", show_progress=False)
    assert len(problems) == 1 and "model.safetensors: sha256" in problems[0]
    assert cli.main(["models", "verify", "tiny"]) == 1
    weights.write_bytes(b"short")
    ok, reason = store.status(store.get("tiny"))
    assert not ok and "size 5 != manifest 7000" in reason
    with pytest.raises(ModelUnavailable, match="size 5 != manifest 7000"):
        resolve_model_ref("store:tiny")
    weights.unlink()
    with pytest.raises(ModelUnavailable, match="missing model.safetensors.*models pull tiny"):
        resolve_model_ref("tiny")


def test_resolution_order(tmp_path, store, monkeypatch):
    store.add("dup", str(make_model_dir(tmp_path / "src")), family="timm")
    local = make_model_dir(tmp_path / "cwd" / "dup")
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_model_ref("dup") == str(local)  # a local path wins over the store
    assert resolve_model_ref("store:dup") == str(tmp_path / "store" / "weights" / "dup")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_ref("dup") == str(tmp_path / "store" / "weights" / "dup")
    assert resolve_model_ref("tf_efficientnet_lite0") == "tf_efficientnet_lite0"  # a family's own name
    assert resolve_model_ref("package:efficientnet_lite0") == "package:efficientnet_lite0"
    with pytest.raises(ModelUnavailable, match="no model 'nothing' in the store"):
        resolve_model_ref("store:nothing")
    with pytest.raises(ModelUnavailable, match="local path ./absent does not exist"):
        resolve_model_ref("./absent")
    with pytest.raises(ModelUnavailable, match="heads/x.npz does not exist"):
        resolve_model_ref("heads/x.npz")


def test_hub_id_offline_is_a_fast_clear_error(tmp_path, store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_CACHE when first imported; point the live constant at an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hfcache"))
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="offline.*natix-miner models add"):
        resolve_model_ref("natix-network-org/roadwork")
    assert time.monotonic() - t0 < 5
    # a model that is in the local HF cache resolves to its snapshot, offline
    snap = tmp_path / "hfcache" / "models--org--cached" / "snapshots" / ("a" * 40)
    make_model_dir(snap)
    (tmp_path / "hfcache" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "hfcache" / "models--org--cached" / "refs" / "main").write_text("a" * 40)
    assert resolve_model_ref("org/cached") == str(snap)


def test_pull_offline_or_without_hub_id_fails_clearly(tmp_path, store, monkeypatch, capsys):
    store.save(Manifest(name="remote", family="clip_zeroshot", hub_id="openai/clip-vit-base-patch32"))
    store.add("local-only", str(make_model_dir(tmp_path / "src")), family="timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="offline.*cannot download openai/clip-vit-base-patch32"):
        store.pull("remote")
    assert cli.main(["models", "pull", "remote"]) == 1
    assert "offline" in capsys.readouterr().err
    with pytest.raises(ModelUnavailable, match="names no hub_id"):
        store.pull("local-only")
    with pytest.raises(ModelUnavailable, match="files absent.*models pull remote"):
        resolve_model_ref("remote")


def test_cli_add_list_json(tmp_path, store, capsys):
    src = make_model_dir(tmp_path / "src")
    assert cli.main(["models", "add", "cli-model", str(src), "--family", "dino_head", "--licence", "apache-2.0"]) == 0
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cli-model"]["present"] and rows["cli-model"]["family"] == "dino_head"
    assert rows["cli-model"]["size_bytes"] == 7025
    assert "rapidocr-ppocrv4" in rows  # the repo's committed manifests stay visible
    assert cli.main(["models", "verify", "cli-model"]) == 0


def test_invalid_manifest_names_the_file(tmp_path, store):
    (tmp_path / "store" / "manifests").mkdir(parents=True)
    (tmp_path / "store" / "manifests" / "bad.json").write_text('{"name": "bad", "family": "x", "sha": 1}')
    with pytest.raises(ModelUnavailable, match="bad.json: invalid manifest"):
        store.get("bad")


def test_committed_manifests_are_valid_and_package_models_verify():
    store = ModelStore(REPO_ROOT / "models")
    manifests = store.manifests()
    assert len(manifests) >= 5
    for m in manifests:
        assert m.family in FAMILIES, m.family
        assert m.hub_id or m.path, m.name
        if m.card:
            assert (store.root / m.card).is_file(), m.card
    for name in ("rapidocr-ppocrv4", "efficientnet-lite0-imagenet"):
        assert store.verify(name, show_progress=False) == []
