"""Registration with NATIX's participant server (spec section 4).

Sign the current unix timestamp (as text) with the hotkey, POST::

    {"uid": "<uid>", "message": "<timestamp>", "natix_public_key": "<hotkey ss58>",
     "natix_signature": "<sr25519 signature, hex>", "type": "miner", "model_repo": "<org/name>"}

to ``<base>/participants/register``, then poll ``<base>/participants/registration-status/<uid>``
until its ``status`` is ``succeeded``/``success`` (done) or ``failed``/``error`` (refused).
``uid`` and ``message`` are strings and the signature is bare hex, as NATIX's own ``register.sh``
sends them (``jq --arg``, ``btcli wallet sign``).

Usage::

    client = RegistrationClient("https://hydra.natix.network")
    payload = build_registration(wallet.hotkey, uid=42, model_repo="acme/roadwork")
    client.register(payload)
    final = client.wait(42, interval_s=3, timeout_s=180, on_update=print)
"""

import time
import typing

import requests

DEFAULT_BASE_URL = "https://hydra.natix.network"
REGISTER_PATH = "/participants/register"
STATUS_PATH = "/participants/registration-status/{uid}"
DONE = ("succeeded", "success")
FAILED = ("failed", "error")


class RegistrationError(RuntimeError):
    """The server refused the registration or answered something unreadable."""


class RegistrationTimeout(RegistrationError):
    pass


def build_registration(keypair, uid: int, model_repo: str, participant_type: str = "miner",
                       timestamp: typing.Optional[int] = None) -> dict:
    if int(uid) < 0:
        raise ValueError(f"uid must be >= 0, got {uid}")
    if participant_type == "miner" and not (model_repo or "").strip():
        raise ValueError("a miner registration needs --model-repo (the Hugging Face repository, e.g. acme/roadwork)")
    message = str(int(timestamp if timestamp is not None else time.time()))
    payload = {
        "uid": str(int(uid)),
        "message": message,
        "natix_public_key": keypair.ss58_address,
        "natix_signature": keypair.sign(message.encode("utf-8")).hex(),
        "type": participant_type,
    }
    if participant_type == "miner":
        payload["model_repo"] = model_repo.strip()
    return payload


class RegistrationClient:
    def __init__(self, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 30.0,
                 session: typing.Optional[requests.Session] = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def _json(self, resp: requests.Response, what: str) -> dict:
        try:
            body = resp.json()
        except ValueError:
            raise RegistrationError(f"{what}: HTTP {resp.status_code}, not JSON: {resp.text[:300]!r}") from None
        if not isinstance(body, dict):
            body = {"response": body}
        return body

    def register(self, payload: dict) -> dict:
        """POST the registration; returns the server's JSON (raises on HTTP >= 400)."""
        url = self.base_url + REGISTER_PATH
        try:
            resp = self.session.post(url, json=payload, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise RegistrationError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        body = self._json(resp, f"POST {url}")
        if resp.status_code >= 400:
            detail = body.get("detail") or body.get("error") or body
            raise RegistrationError(f"POST {url}: HTTP {resp.status_code}: {detail}")
        return body

    def status(self, uid: int) -> dict:
        url = self.base_url + STATUS_PATH.format(uid=int(uid))
        try:
            resp = self.session.get(url, timeout=self.timeout_s)
        except requests.RequestException as exc:
            return {"status": "", "error_message": f"{type(exc).__name__}: {exc}", "transient": True}
        if resp.status_code >= 500:
            return {"status": "", "error_message": f"HTTP {resp.status_code}", "transient": True}
        return self._json(resp, f"GET {url}")

    def wait(self, uid: int, interval_s: float = 3.0, timeout_s: float = 180.0,
             on_update: typing.Optional[typing.Callable[[dict], None]] = None) -> dict:
        """Poll until done (returns the status body) or failed (raises); raises on timeout."""
        deadline = time.monotonic() + timeout_s
        last: dict = {}
        while True:
            last = self.status(uid)
            if on_update is not None:
                on_update(last)
            state = str(last.get("status") or "").lower()
            if state in DONE:
                return last
            if state in FAILED:
                reason = last.get("error_message") or last.get("detail") or "no reason given"
                raise RegistrationError(f"registration of uid {uid} failed: {reason}")
            if time.monotonic() + interval_s > deadline:
                raise RegistrationTimeout(f"registration of uid {uid} still {state or 'pending'} after "
                                          f"{timeout_s:.0f}s; check later: GET {self.base_url}"
                                          f"{STATUS_PATH.format(uid=int(uid))}")
            time.sleep(interval_s)
