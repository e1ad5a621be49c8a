"""`make bench`'s adoption row: a generated old homeserver (Synapse in the Debian package's layout, 10,000 users and
50,000 access tokens on the host's PostgreSQL: matrix_deploy/lab/old_homeserver.py) adopted by a deploy with
adopt_synapse. Total time of that run, and how long the homeserver does not answer clients: a client sends whoami
with a kept token every 100 ms, to the old Synapse (its own listener) and to the deployment (through nginx); the
time in which neither answers (goal: under 60 s)."""

import http.client
import json
import time

from downtime import Poller, whoami  # bench/ beside this script

from matrix_deploy import lab
from matrix_deploy.lab import old_homeserver
from matrix_deploy.lab.probe import LAB_SETTINGS

USERS, TOKENS = 10_000, 50_000
GOAL = 60  # seconds


def _old_whoami(old, token: str):
    def request() -> bool:
        conn = http.client.HTTPConnection(old.host.address, old_homeserver.PORT, timeout=5)
        try:
            conn.request("GET", "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            return response.status == 200 and b"user_id" in response.read()
        finally:
            conn.close()

    return request


def _either(*requests):
    def request() -> bool:
        for one in requests:
            try:
                if one():
                    return True
            except OSError:
                pass
        return False

    return request


def measure(run, settings: dict) -> list[tuple]:
    """Rows for bench.py's table; `run` is its pyinfra runner, `settings` the single host's lab settings."""
    try:
        LAB_SETTINGS.unlink(missing_ok=True)
        lab.down(log=lambda *_: None)
        (host,) = lab.up(spec=[("bench1", lab.ROLES)])
        old = old_homeserver.build(host)
        population = old_homeserver.populate(old)
        filled = old_homeserver.fill(old, users=USERS, tokens=TOKENS)
        token = population.alice_token
        LAB_SETTINGS.write_text(json.dumps({**settings, "adopt_synapse": {"host": "bench1"}}))
        with Poller(_either(_old_whoami(old, token), whoami(host, token))) as clients:
            took, _ = run()
            # The deployment answers the kept token once nginx (the run's last stage) is up: wait for it.
            deadline = time.monotonic() + 120
            while not _either(whoami(host, token))() and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)
        lab.down(log=lambda *_: None)
    gap = clients.downtime()
    return [
        (f"adoption of a homeserver with {filled.users:,} users and {filled.tokens:,} tokens: the run",
         f"{took:.0f} s", "(watch for regressions)", None),
        ("adoption: time no client request is answered (by the old Synapse, then the deployment)",
         f"{gap:.1f} s ({clients.failed()} failed)", f"< {GOAL} s", gap < GOAL),
    ]  # fmt: skip
