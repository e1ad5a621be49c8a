"""Client-visible downtime: a client sending one authenticated request through nginx every 100 ms."""

import base64
import http.client
import json
import ssl
import threading
import time
import urllib.parse

from matrix_deploy.lab import PROJECT_DIR as ROOT
from matrix_deploy.lab import LabHost
from matrix_deploy.lab.probe import PUBLIC_HOST
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.mas.options import MAS_ADMIN_CLIENT_ID

PERIOD = 0.1
MAS_HOST = "auth.lab.test"


def _request(host: LabHost, vhost: str, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(host.address, 443, timeout=10, context=ssl._create_unverified_context())
    try:
        conn.request(method, path, body=body, headers={"Host": vhost, **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def login(host: LabHost) -> str:
    """An access token from a real password login through nginx (MAS's compatibility layer)."""
    d = build(ROOT / "inventories/lab.py")
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": d.settings.admin_user},
            "password": d.secrets["admin_password"]}  # fmt: skip
    status, raw = _request(host, PUBLIC_HOST, "POST", "/_matrix/client/v3/login", json.dumps(body).encode(),
                           {"Content-Type": "application/json"})  # fmt: skip
    if status != 200:
        raise SystemExit(f"bench: login through nginx failed: {status} {raw[:300]!r}")
    return json.loads(raw)["access_token"]


def whoami(host: LabHost, token: str):
    """Synapse's whoami with the token: Synapse answers, after MAS introspected the token (Synapse caches that 2 min)."""

    def request() -> bool:
        status, raw = _request(host, PUBLIC_HOST, "GET", "/_matrix/client/v3/account/whoami", None,
                               {"Authorization": f"Bearer {token}"})  # fmt: skip
        return status == 200 and b"user_id" in raw

    return request


def introspection(host: LabHost, token: str):
    """MAS itself: the token introspected at MAS's public host, by MAS's admin API client (a confidential client),
    as Synapse does on every token it has not seen in the last 2 minutes."""
    d = build(ROOT / "inventories/lab.py")
    basic = base64.b64encode(f"{MAS_ADMIN_CLIENT_ID}:{d.secrets['mas_admin_client_secret']}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"}
    body = urllib.parse.urlencode({"token": token}).encode()

    def request() -> bool:
        status, raw = _request(host, MAS_HOST, "POST", "/oauth2/introspect", body, headers)
        return status == 200 and json.loads(raw).get("active") is True

    return request


class Poller:
    """Sends `request` every PERIOD seconds in a thread while the block runs; records (start, ok, duration)."""

    def __init__(self, request):
        self.request, self.samples, self._stop = request, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = self.request()
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
            self.samples.append((started, ok, time.monotonic() - started))
            self._stop.wait(max(0.0, PERIOD - (time.monotonic() - started)))

    def __enter__(self):
        if not self.request():
            raise SystemExit("bench: the polled request fails before the run")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def downtime(self) -> float:
        """Seconds of failed requests: each run of failures from its first request's start to the next success's."""
        total, failing_since = 0.0, None
        for started, ok, _ in self.samples:
            if not ok and failing_since is None:
                failing_since = started
            elif ok and failing_since is not None:
                total, failing_since = total + started - failing_since, None
        if failing_since is not None:  # still failing when the run ended
            total += self.samples[-1][0] + self.samples[-1][2] - failing_since
        return total

    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.samples if not ok)

    def slowest(self) -> float:
        return max((duration for _, ok, duration in self.samples if ok), default=0.0)
