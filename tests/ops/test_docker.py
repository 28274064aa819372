"""The container image (issue 20).

Marker ``docker``: ``Dockerfile.miner`` is built on the local Debian base (``local/debian:bookworm``,
made by ``scripts/docker_setup.sh`` with debootstrap; no registry) with the embedded CPU demo profile,
started in local mode with a real wallet mounted read-only, and answered from outside the container
by the mock validator (0 invalid, every challenge answered). Then: the processes run as a non-root
user, the health check goes healthy, the metrics port is published on 127.0.0.1 only, and no key
(the wallet's mnemonic, seed or private key) and no build secret (the proxy's CA, the build's pip
configuration) is in any layer (``docker save`` through ``grep``), in ``docker history`` or in the
image's environment. A second container takes its hotkey from a real OpenBao instead (AppRole ids in
an ``--env-file``): served hotkey checked, no mnemonic or secret id in its writable layer or log.
``docker stop`` exits 0; a world-readable key is refused. Skipped, with the reason, only when no
Docker engine answers
(``sudo bash scripts/docker_setup.sh`` installs and starts one; ``.ci/run`` calls it).

Without the marker: the compose file, Prometheus config and Grafana provisioning, and the build
helper's translation of this host's pip configuration and its loopback file server.

    .venv/bin/python -m pytest -q tests/ops/test_docker.py                 # ~4-6 min with a cold build
    .venv/bin/python -m pytest -q tests/ops/test_docker.py -m 'not docker' # seconds
"""

from tests.support.paths import REPO_ROOT
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

ROOT = REPO_ROOT
BASE_IMAGE = os.environ.get("NATIX_DOCKER_BASE", "local/debian:bookworm")
TAG = "natix-miner:test-cpu"
UID = 10001  # Dockerfile.miner's NATIX_UID


def _load_build_helper():
    spec = importlib.util.spec_from_file_location("natix_docker_build", os.path.join(ROOT, "scripts", "docker_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


db = _load_build_helper()


# ---- without Docker ---------------------------------------------------------------------------------

def test_pipconf_serves_local_indexes_last(tmp_path):
    idx = tmp_path / "pypi" / "simple"
    (idx / "demo").mkdir(parents=True)
    (tmp_path / "pypi" / "files").mkdir()
    links = tmp_path / "wheels"
    links.mkdir()
    cfg = {"extra-index-url": f"file://{idx} file:///does/not/exist", "find-links": f"{links} https://example.org/l",
           "cert": "/etc/ssl/certs/ca-certificates.crt", "timeout": "60"}
    roots = db._Roots()
    roots.base = "http://127.0.0.1:{port}"
    conf = db.build_pipconf(cfg, roots)
    lines = dict(line.split(" = ", 1) for line in conf.splitlines()[1:])
    # the default index is kept; the local one comes last (pip takes a file several indexes hold from the last)
    assert lines["index-url"] == db.PYPI
    assert lines["extra-index-url"].split() == [f"http://127.0.0.1:{{port}}/fs{idx}/"]
    assert lines["find-links"].split() == [f"http://127.0.0.1:{{port}}/fs{links}/", "https://example.org/l"]
    assert "cert" not in lines  # the CA travels as its own secret, never inside the config
    assert roots.roots == [tmp_path / "pypi", links]  # the index's parent: its pages link ../../files/


def test_loopback_server_serves_only_its_roots(tmp_path):
    root = tmp_path / "pub"
    (root / "files").mkdir(parents=True)
    (root / "files" / "a.whl").write_bytes(b"wheel")
    (tmp_path / "private.txt").write_text("secret")
    roots = db._Roots()
    roots.base = ""
    roots.url(root / "simple", index=True)
    with db.serve_roots(roots) as port:
        base = f"http://127.0.0.1:{port}/fs"
        assert urllib.request.urlopen(f"{base}{root}/files/a.whl", timeout=5).read() == b"wheel"
        for path in (f"{tmp_path}/private.txt", f"{root}/../private.txt", "/etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"{base}{path}", timeout=5)
            assert e.value.code == 404, path
    assert roots.served == {"files": 1, "bytes": 5}  # what the build's report counts


def test_compose_pins_images_and_keeps_metrics_private():
    compose = yaml.safe_load(open(os.path.join(ROOT, "deploy", "compose.yaml")))
    services = compose["services"]
    assert set(services) == {"miner", "prometheus", "grafana"}
    for name, svc in services.items():
        image = svc["image"]
        ref = image.split("@")[0].rsplit(":", 1)
        assert "@sha256:" in image or (len(ref) == 2 and ref[1] not in ("latest", "") and any(c.isdigit() for c in ref[1])), \
            f"{name}: image {image!r} is not pinned by version or digest"
    miner = services["miner"]
    assert miner["build"]["dockerfile"] == "Dockerfile.miner"
    assert os.path.exists(os.path.join(ROOT, "deploy", miner["build"]["context"], "Dockerfile.miner"))
    published = [p for p in miner["ports"] if p.endswith(":9100")]
    assert published and all(p.startswith("127.0.0.1:") for p in published), miner["ports"]
    for svc in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[svc]["ports"]), services[svc]["ports"]
    assert any(v.endswith(":/home/natix/.bittensor/wallets:ro") for v in miner["volumes"])
    assert any(v.startswith("natix-models:/models") for v in miner["volumes"])
    # every bind-mounted file of the stack exists in the repository
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert os.path.exists(os.path.join(ROOT, "deploy", src)), v


def test_prometheus_loads_alerts_and_scrapes_the_job_they_watch():
    prom = yaml.safe_load(open(os.path.join(ROOT, "deploy", "prometheus.yml")))
    compose = yaml.safe_load(open(os.path.join(ROOT, "deploy", "compose.yaml")))
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"] if v.startswith("./"))
    assert mounts["./alerts.yml"] in prom["rule_files"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    rules = yaml.safe_load(open(os.path.join(ROOT, "deploy", "alerts.yml")))["groups"][0]["rules"]
    down = next(r for r in rules if r["alert"] == "NatixMinerDown")
    assert 'job=~"natix-miner.*"' in down["expr"] and "natix-miner" in jobs
    assert jobs["natix-miner"]["static_configs"][0]["targets"] == ["miner:9100"]


def test_grafana_provisioning_points_at_the_dashboard():
    compose = yaml.safe_load(open(os.path.join(ROOT, "deploy", "compose.yaml")))
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    ds = yaml.safe_load(open(os.path.join(ROOT, "deploy", "grafana", "provisioning", "datasources", "prometheus.yml")))
    assert ds["datasources"][0]["type"] == "prometheus" and ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load(open(os.path.join(ROOT, "deploy", "grafana", "provisioning", "dashboards", "natix.yml")))
    folder = prov["providers"][0]["options"]["path"]
    assert os.path.dirname(mounts["./grafana-dashboard.json"]) == folder
    dash = json.load(open(os.path.join(ROOT, "deploy", "grafana-dashboard.json")))
    # the dashboard's ${DS_PROMETHEUS} is a data-source variable, so a provisioned copy resolves it
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dash["templating"]["list"])


# ---- with Docker --------------------------------------------------------------------------------------

def _docker(*args, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCKER, *args], capture_output=True, text=True, check=check, timeout=timeout, **kw)


DOCKER: list = []


@pytest.fixture(scope="module")
def image():
    """Dockerfile.miner built on the local Debian base; its tag."""
    global DOCKER
    try:
        DOCKER = db.docker_client()
    except db.BuildError as exc:
        pytest.skip(f"no Docker: {exc}")
    why = db.engine_ok(DOCKER)
    if why:
        pytest.skip(f"no Docker engine answers ({why}); sudo bash scripts/docker_setup.sh installs and starts one")
    if _docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "docker_setup.sh"), "--base-only"],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"base image {BASE_IMAGE} missing and could not be built:\n{r.stderr[-2000:]}"
    seconds = db.build(TAG, base=BASE_IMAGE, quiet=True)
    print(f"\n[docker] built {TAG} on {BASE_IMAGE} in {seconds:.0f} s")
    return TAG


@pytest.fixture(scope="module")
def wallets(tmp_path_factory):
    """A miner wallet (hotkey + public coldkey only, as a miner host should hold) and a validator wallet."""
    from natix_miner.miner.wallet import ephemeral_wallet

    root = tmp_path_factory.mktemp("docker-wallets")
    miner = ephemeral_wallet("miner", "default", str(root / "miner"))
    os.remove(os.path.join(str(root / "miner"), "miner", "coldkey"))
    validator = ephemeral_wallet("validator", "default", str(root / "validator"))
    hotkey_file = os.path.join(str(root / "miner"), "miner", "hotkeys", "default")
    secrets = json.load(open(hotkey_file))
    return {"miner_dir": str(root / "miner"), "miner": miner.hotkey.ss58_address, "secrets": secrets,
            "validator_dir": str(root / "validator"), "validator": validator.hotkey.ss58_address}


def _published(container: str, port: int) -> int:
    out = _docker("port", container, f"{port}/tcp").stdout.split()
    assert out and all(line.startswith("127.0.0.1:") for line in out), f"port {port} published as {out}"
    return int(out[0].rsplit(":", 1)[1])


def _wait_http(url: str, timeout: float) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError) as exc:
            last = exc
            time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 in {timeout:.0f} s: {last}")


@pytest.fixture(scope="module")
def miner(image, wallets):
    """The image running in local mode, wallet mounted read-only; yields (name, axon port, metrics port)."""
    name = f"natix-test-{uuid.uuid4().hex[:8]}"
    if os.geteuid() == 0:  # the miner refuses key files other users can read: hand them to the image's user
        for path in [wallets["miner_dir"], *glob.glob(wallets["miner_dir"] + "/**", recursive=True)]:
            os.chown(path, UID, UID)
        user = []
    else:
        user = ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "NATIX_WALLET_PATH=/home/natix/.bittensor/wallets",
                "-e", "NATIX_AXON_STATE_DIR=/tmp/natix-state"]  # that uid cannot write the image user's home
    t0 = time.monotonic()
    _docker("run", "-d", "--name", name, *user,
            "-p", "127.0.0.1::8091", "-p", "127.0.0.1::9100",
            "-v", f"{wallets['miner_dir']}:/home/natix/.bittensor/wallets:ro",
            "-e", "NATIX_LOCAL=1", "-e", "NATIX_WALLET_NAME=miner", "-e", "NATIX_WALLET_HOTKEY=default",
            "-e", f"NATIX_BLACKLIST_ALLOWED_HOTKEYS={wallets['validator']}",
            "-e", "HF_HUB_OFFLINE=1", "-e", "TRANSFORMERS_OFFLINE=1", image)
    try:
        axon, metrics = _published(name, 8091), _published(name, 9100)
        try:
            ready = _wait_http(f"http://127.0.0.1:{metrics}/readyz", 300)
        except AssertionError:
            logs = _docker("logs", "--tail", "60", name, check=False)
            raise AssertionError(f"the container never got ready; its log:\n{logs.stdout}{logs.stderr}") from None
        print(f"\n[docker] container ready in {time.monotonic() - t0:.0f} s")
        assert ready["ready"] is True and ready["hotkey"] == wallets["miner"], ready
        yield name, axon, metrics
    finally:
        _docker("rm", "-f", "-v", name, check=False)


@pytest.mark.docker
@pytest.mark.slow
def test_mock_validator_answered_from_outside(miner, wallets, tmp_path):
    name, axon, _ = miner
    out = tmp_path / "report.json"
    n = 16
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "mock_validator.py"),
                        f"container=127.0.0.1:{axon}:{wallets['miner']}", "--n", str(n), "--json", str(out),
                        "--wallet.name", "validator", "--wallet.hotkey", "default",
                        "--wallet.path", wallets["validator_dir"], "--no-progress"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    print(f"\n[docker] mock validator: {n} challenges in {time.monotonic() - t0:.0f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["n"] == n and report["invalid"] == 0 and report["timeouts"] == 0, report
    assert report["answered"] == n, report  # every challenge got a finite probability in [0, 1]


@pytest.mark.docker
@pytest.mark.slow
def test_runs_as_non_root_healthy_and_metrics_on_loopback(miner, image):
    name, _, metrics = miner
    assert _docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip() == "natix"
    top = _docker("top", name, "-eo", "pid,uid,args").stdout.splitlines()[1:]
    assert top and all(line.split()[1] != "0" for line in top), top  # tini and the miner: no root process
    assert _docker("exec", name, "id", "-u").stdout.strip() != "0"
    health = _wait_http(f"http://127.0.0.1:{metrics}/healthz", 30)
    assert health["status"] == "ok"
    deadline = time.monotonic() + 120  # Docker's own HEALTHCHECK (every 30 s)
    status = ""
    while time.monotonic() < deadline:
        status = _docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
        if status in ("healthy", "unhealthy"):
            break
        time.sleep(3)
    assert status == "healthy", status
    bindings = json.loads(_docker("inspect", "-f", "{{json .HostConfig.PortBindings}}", name).stdout)
    assert all(b["HostIp"] == "127.0.0.1" for b in bindings["9100/tcp"]), bindings


def _needles(wallets) -> dict:
    """What must not be in the image: the wallet's secrets and the build's secrets."""
    s = wallets["secrets"]
    found = {"mnemonic": s["secretPhrase"], "seed": s["secretSeed"].removeprefix("0x"),
             "private key": s["privateKey"].removeprefix("0x")}
    for crt in sorted(glob.glob("/usr/local/share/ca-certificates/*.crt")):  # the proxy's CA (build secret)
        body = [ln for ln in open(crt).read().splitlines() if ln and not ln.startswith("-----")]
        if len(body) > 4:
            found[f"CA {os.path.basename(crt)}"] = body[len(body) // 2]
    roots = db._Roots()
    db.build_pipconf(db.host_pip_config(), roots)
    for r in roots.roots:  # the build's pip.conf (build secret) names these served directories
        found[f"pip.conf root {r}"] = f"/fs{r}/"
    return found


@pytest.mark.docker
@pytest.mark.slow
def test_no_key_or_build_secret_in_any_layer(miner, image, wallets, tmp_path):
    needles = _needles(wallets)
    # a string every image has (natix_miner/miner/wallet.py): proves the scan reads the layers
    control = "local mode: wallet %s/%s not found; using a throw-away hotkey"
    assert control in open(os.path.join(ROOT, "natix_miner", "miner", "wallet.py")).read()
    patterns = tmp_path / "needles"
    patterns.write_text("\n".join([control, *needles.values()]) + "\n")
    t0 = time.monotonic()
    save = subprocess.Popen([*DOCKER, "save", image], stdout=subprocess.PIPE)
    grep = subprocess.run(["grep", "-a", "-o", "-F", "-f", str(patterns)], stdin=save.stdout,
                          capture_output=True, timeout=900)
    save.stdout.close()
    assert save.wait(timeout=60) == 0
    print(f"\n[docker] docker save | grep over every layer: {time.monotonic() - t0:.0f} s")
    hits = set(grep.stdout.decode("utf-8", "replace").splitlines())
    assert control in hits, "the layer scan did not see a file every image holds"
    leaked = [what for what, value in needles.items() if value in hits]
    assert not leaked, f"found in the image's layers: {leaked}"
    history = _docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    cfg = json.loads(_docker("image", "inspect", image).stdout)[0]["Config"]
    text = history + json.dumps(cfg)
    assert not [w for w, v in needles.items() if v in text] and "BEGIN CERTIFICATE" not in text
    assert not [e for e in cfg["Env"] if e.split("=")[0] in ("VAULT_TOKEN", "VAULT_SECRET_ID", "PIP_CERT", "PIP_CONFIG_FILE")]
    # and no key file anywhere in the final filesystem (the wallet directory is only a mount point)
    found = _docker("run", "--rm", "--user", "0", "--entrypoint", "find", image, "/", "-xdev",
                    "(", "-path", "*/hotkeys/*", "-o", "-name", "coldkey", "-o", "-name", "coldkeypub.txt",
                    "-o", "-name", "miner*.env", ")", "-print").stdout.split()
    assert not found, found
    assert _docker("run", "--rm", "--entrypoint", "ls", image, "-A", "/home/natix/.bittensor/wallets").stdout == ""


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_stops_it_cleanly(miner):
    """Kept after the other tests of the shared container: ``docker stop`` (SIGTERM through tini) exits 0."""
    name = miner[0]
    t0 = time.monotonic()
    _docker("stop", "-t", "30", name)
    assert _docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    assert time.monotonic() - t0 < 30, "the miner ignored SIGTERM until docker killed it"


def _writable_layer_bytes(container: str) -> bytes:
    """Every file the container added or changed (``docker diff``), copied out as tar streams."""
    changed = sorted({line.split(" ", 1)[1] for line in _docker("diff", container).stdout.splitlines()
                      if line[:1] in "AC"})
    leaves = [p for p in changed if not any(q.startswith(p.rstrip("/") + "/") for q in changed)]
    out = b""
    for path in leaves:
        r = subprocess.run([*DOCKER, "cp", f"{container}:{path}", "-"], capture_output=True, timeout=120)
        out += r.stdout
    return out


@pytest.mark.docker
@pytest.mark.slow
def test_vault_hotkey_stays_in_memory(image, tmp_path):
    """No wallet mounted: the hotkey comes from a real OpenBao (AppRole ids in an --env-file given at run
    time); the served hotkey is the secret's, and neither the mnemonic nor the secret id reaches the
    container's writable layer or its log."""
    from bittensor_wallet import Keypair

    from tests.support.ops_support import free_port, start_bao

    mnemonic = Keypair.generate_mnemonic(12)
    hotkey = Keypair.create_from_mnemonic(mnemonic).ss58_address
    bao = start_bao()
    name = f"natix-test-vault-{uuid.uuid4().hex[:8]}"
    try:
        bao.put("natix/miner-hotkey", {"mnemonic": mnemonic})
        role_id, secret_id = bao.approle("natix-miner", ["secret/data/natix/miner-hotkey"])
        env_file = tmp_path / "miner-vault.env"
        env_file.write_text(f"VAULT_ADDR={bao.addr}\nNATIX_VAULT_PATH=natix/miner-hotkey\n"
                            f"VAULT_ROLE_ID={role_id}\nVAULT_SECRET_ID={secret_id}\n")
        env_file.chmod(0o600)
        axon, metrics = free_port(), free_port()
        # host network: the dev server listens on the host's loopback; so must the metrics then
        _docker("run", "-d", "--name", name, "--network", "host", "--env-file", str(env_file),
                "-e", "NATIX_LOCAL=1", "-e", f"NATIX_AXON_PORT={axon}", "-e", "NATIX_METRICS_HOST=127.0.0.1",
                "-e", f"NATIX_METRICS_PORT={metrics}", image)
        try:
            ready = _wait_http(f"http://127.0.0.1:{metrics}/readyz", 300)
        except AssertionError:
            logs = _docker("logs", "--tail", "60", name, check=False)
            raise AssertionError(f"the container never got ready; its log:\n{logs.stdout}{logs.stderr}") from None
        assert ready["hotkey"] == hotkey and ready["checks"]["vault"]["ok"] is True, ready
        _docker("stop", "-t", "30", name)
        layer = _writable_layer_bytes(name)
        assert f"nonces-{hotkey}.log".encode() in layer  # control: the copy holds the axon's state file
        logs = _docker("logs", name)
        for what, value in (("mnemonic", mnemonic), ("secret id", secret_id)):
            assert value.encode() not in layer, f"the {what} is in the container's writable layer"
            assert value not in logs.stdout + logs.stderr, f"the {what} is in the container's log"
    finally:
        _docker("rm", "-f", "-v", name, check=False)
        bao.stop()


@pytest.mark.docker
@pytest.mark.slow
def test_container_refuses_a_key_other_users_can_read(image, wallets, tmp_path):
    """The image keeps the miner's start-up permission check: a world-readable hotkey is refused."""
    if shutil.which("id") is None or os.geteuid() != 0:
        pytest.skip("needs root to hand the key to the image's user")
    bad = tmp_path / "wallets"
    shutil.copytree(wallets["miner_dir"], bad)
    for path in [str(bad), *glob.glob(str(bad) + "/**", recursive=True)]:
        os.chown(path, UID, UID)
    os.chmod(bad / "miner" / "hotkeys" / "default", 0o644)
    r = _docker("run", "--rm", "-v", f"{bad}:/home/natix/.bittensor/wallets:ro", "-e", "NATIX_LOCAL=1",
                "-e", "NATIX_WALLET_NAME=miner", "-e", "NATIX_METRICS_ENABLED=false", image, check=False, timeout=300)
    assert r.returncode != 0
    assert "chmod 600" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
