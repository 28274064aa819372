"""Profiles and manifests are found through package data or an explicit root (natix_miner/resources.py):
``pip install .`` (not editable) into a folder, then the installed ``natix-miner`` validates and runs the
demo profile from a directory outside the checkout, with only that folder on PYTHONPATH."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natix_miner import resources
from tests.support.paths import REPO_ROOT

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}


def test_every_committed_profile_and_manifest_is_shipped():
    """Nothing under configs/ or models/ that git tracks is left out of the package (weights are ignored)."""
    tracked = subprocess.run(["git", "ls-files", "configs", "models"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    shipped = {p.as_posix() for p in resources.shipped_files(Path(REPO_ROOT))}
    assert sorted(set(tracked) - shipped) == []
    assert "configs/demo-cpu.yaml" in shipped and "models/demo/effnet_lite0_head.npz" in shipped
    assert {"models/demo/effnet_lite0_roadwork.pth", "models/demo/effnet_lite0_det.pt"} <= set(shipped)


def test_the_checkout_is_the_root_when_running_from_source(monkeypatch):
    monkeypatch.delenv("NATIX_ROOT", raising=False)
    monkeypatch.delenv("NATIX_MODEL_DIR", raising=False)
    assert resources.root() == Path(REPO_ROOT).resolve()
    assert not resources.is_packaged()
    assert resources.model_store_dir() == Path(REPO_ROOT).resolve() / "models"
    monkeypatch.setenv("NATIX_MODEL_DIR", "/srv/weights")
    assert resources.model_store_dir() == Path("/srv/weights")


def _source_copy(dest: Path) -> Path:
    """The files a build reads (what git tracks or would track), copied: the build writes its build/ and
    egg-info there, never in the checkout that other tests read."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.split("\n")
    wanted = [f for f in listed if f in ("setup.py", "MANIFEST.in", "README.md", "requirements.lock")
              or f.startswith(("natix_miner/", "configs/", "models/"))]
    if not wanted:
        return Path(REPO_ROOT)  # not a git checkout: build in place
    for rel in wanted:
        src = Path(REPO_ROOT) / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """natix-miner installed (not editable) into a folder; a working directory outside the checkout."""
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(_source_copy(tmp_path_factory.mktemp("src")))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    work = tmp_path_factory.mktemp("elsewhere")
    bus = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "ultralytics" / "assets" / "bus.jpg"
    if not bus.exists():
        import ultralytics

        bus = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    shutil.copyfile(bus, work / "bus.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATIX_")}
    env.update(OFFLINE, PYTHONPATH=str(target))
    return target, work, env


def _run(installed, *args, **extra_env):
    target, work, env = installed
    return subprocess.run([str(target / "bin" / "natix-miner"), *args], cwd=work, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=300)


def test_the_installed_package_is_the_one_imported(installed):
    target, work, env = installed
    out = subprocess.run([sys.executable, "-c", "import natix_miner.resources as r; print(r.__file__); "
                          "print(r.root()); print(r.model_store_dir())"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=60)
    module, root, store = out.stdout.split()
    assert module.startswith(str(target)) and root == str(target / "natix_miner" / "_shipped")
    assert store == str(work / "models")  # the writable store: never inside site-packages
    spawn = subprocess.run([sys.executable, "-c", "from natix_miner.validator.targets import SpawnedMiner; "
                            "print(SpawnedMiner('5F', port=1).command('/w')[1:4])"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert spawn.stdout.strip() == "['-m', 'natix_miner.cli', 'run']", spawn.stderr  # no neurons/ installed


def test_installed_profile_validate_finds_the_shipped_profile(installed):
    r = _run(installed, "profile", "validate", "demo-cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok: {installed[0] / 'natix_miner' / '_shipped' / 'configs' / 'demo-cpu.yaml'}" in r.stdout


@pytest.mark.slow  # ~20 s on 2 cores: the demo cascade loads and answers
def test_installed_predict_runs_the_demo_profile(installed):
    """The demo's checkpoints (models/demo) and the profile come from the package: a real answer from the
    demo model, not the fallback."""
    r = _run(installed, "predict", "bus.jpg", "--profile", "demo-cpu", "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("{"))
    res = json.loads(line)
    assert not res["fallback"], res
    assert 0.0 <= res["probability"] <= 1.0 and res["tiers_run"][0] == "fast"
    assert "effnet_lite0" in res["evidence"]


def test_an_explicit_root_wins_and_a_wrong_one_is_one_error_line(installed):
    r = _run(installed, "profile", "validate", "demo-cpu", NATIX_ROOT=str(REPO_ROOT))
    assert r.returncode == 0 and f"ok: {Path(REPO_ROOT).resolve() / 'configs' / 'demo-cpu.yaml'}" in r.stdout, r.stderr
    r = _run(installed, "models", "list", NATIX_ROOT=str(installed[1] / "nowhere"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: NATIX_ROOT={installed[1] / 'nowhere'}: no configs/ directory "
                                             f"there; point it at a natix-miner checkout (or a copy of its configs/ "
                                             f"and models/), or unset it"]


def test_calibrate_refuses_to_write_into_the_installed_copy(installed):
    """The shipped files are read-only: a fitted consensus for a packaged profile is refused at once,
    with the fix, before any image is run."""
    r = _run(installed, "calibrate", "--profile", "demo-cpu", "--data", "procedural:8")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    shipped = installed[0] / "natix_miner" / "_shipped" / "configs" / "demo-cpu.yaml"
    assert "inside the installed package's read-only copy" in r.stderr
    assert f"cp {shipped} ./my-profile.yaml) and pass --profile ./my-profile.yaml" in r.stderr
    shipped_fits = sorted(p.name for p in (installed[0] / "natix_miner" / "_shipped" / "configs").glob("*.consensus.json"))
    assert shipped_fits == sorted(p.name for p in (Path(REPO_ROOT) / "configs").glob("*.consensus.json"))  # none added
    fitted = shipped.with_name("demo-cpu.consensus.json")  # the demo's own fit ships, untouched
    assert fitted.read_bytes() == (Path(REPO_ROOT) / "configs" / "demo-cpu.consensus.json").read_bytes()


def test_check_writable_allows_the_checkout_and_refuses_the_packaged_copy():
    resources.check_writable(Path(REPO_ROOT) / "configs" / "x.consensus.json", "x")
    with pytest.raises(ValueError, match="read-only copy"):
        resources.check_writable(resources.PACKAGED_ROOT / "configs" / "x.consensus.json", "x")
