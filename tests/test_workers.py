"""Synapse with workers on one lab host (Debian 13, through the sudo user): Redis, worker units, nginx routing.

Requests go through nginx as clients send them; who served them is read from each process's own Prometheus
metrics (requests counted per servlet) and from the database (the instance that persisted each event).
"""

import json
import re
import threading
import time

import pytest

from matrix_deploy import lab, synapse_workers
from matrix_deploy.inventory import build
from tests.lab_release import prepare as prepare_release
from tests.lab_support import LAB_SETTINGS, ROOT, changed_operations, fetch, pyinfra, sh, ssh

pytestmark = pytest.mark.lab

WORKERS = {"generic": 2, "event_persister": 1, "media_repository": 1, "federation_sender": 1}


@pytest.fixture(scope="module")
def stack():
    lab.down()
    (host,) = lab.up("single")
    LAB_SETTINGS.write_text(json.dumps({"synapse_workers": WORKERS}))
    prepare_release()
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-4000:]
    yield host, build(ROOT / "inventories/lab.py")
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def login(host, deployment) -> str:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"},
            "password": deployment.secrets["admin_password"]}  # fmt: skip
    status, session = fetch(host, "POST", "/_matrix/client/v3/login", body)
    assert status == 200, session
    return session["access_token"]


def served(host, port: int, servlet: str) -> float:
    """How many requests the process with metrics on `port` has counted for `servlet`."""
    text = sh(host, f"curl -fsS http://127.0.0.1:{port}/_synapse/metrics")
    found = re.findall(
        rf'^synapse_http_server_requests_received_total\{{[^}}]*servlet="{servlet}"[^}}]*\}} (\S+)$', text, re.M
    )
    return sum(float(n) for n in found)


def test_clients_are_served_by_the_workers_the_routing_names(stack):
    host, deployment = stack
    ws = {w.name: w for w in synapse_workers.workers(deployment.settings)}
    token = login(host, deployment)
    status, room = fetch(host, "POST", "/_matrix/client/v3/createRoom", {"name": "workers"}, token=token)
    assert status == 200, room
    status, sent = fetch(host, "PUT", f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/t1",
                         {"msgtype": "m.text", "body": "hello workers"}, token=token)  # fmt: skip
    assert status == 200, sent
    status, synced = fetch(host, "GET", "/_matrix/client/v3/sync?timeout=0", token=token)
    assert status == 200 and room["room_id"] in synced["rooms"]["join"], synced
    generic = [w for w in ws.values() if w.kind == "generic"]
    main = deployment.settings.synapse_metrics_port
    assert sum(served(host, w.metrics_port, "SyncRestServlet") for w in generic) >= 1
    assert sum(served(host, w.metrics_port, "RoomCreateRestServlet") for w in generic) >= 1
    assert served(host, main, "SyncRestServlet") == 0 and served(host, main, "RoomCreateRestServlet") == 0
    # Every event of the room was written by the event persister, none by the main process.
    persisted = sh(host, "runuser -u postgres -- psql -d synapse -Atc "
                         f"\"SELECT DISTINCT instance_name FROM events WHERE room_id = '{room['room_id']}'\"")  # fmt: skip
    assert persisted.split() == ["event_persister-1"], persisted


def test_redis_is_on_loopback_and_wants_the_password(stack):
    host, _ = stack
    listening = sh(host, "ss -Hltnp | grep redis-server | awk '{print $4}'").split()
    assert listening and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in listening), listening
    assert "NOAUTH" in ssh(host, "redis-cli -p 6379 ping").stdout
    assert sh(host, "stat -c '%a %U %G' /etc/redis/matrix-deploy.conf").split() == ["640", "root", "redis"]


def test_metrics_are_internal_only(stack):
    host, deployment = stack
    ports = [deployment.settings.synapse_metrics_port] + [
        w.metrics_port for w in synapse_workers.workers(deployment.settings)
    ]
    for port in ports:
        assert sh(host, f"curl -fsS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/_synapse/metrics") == "200"
        bound = sh(host, f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split()
        assert bound == [f"127.0.0.1:{port}"], bound  # one host: loopback only
    assert fetch(host, "GET", "/_synapse/metrics")[0] == 404
    assert fetch(host, "GET", "/metrics")[0] == 404


def test_a_second_run_changes_nothing(stack):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def test_a_synapse_change_restarts_each_instance_in_turn_while_workers_keep_serving(stack):
    """Polling what workers serve (client versions, an authenticated /sync) through nginx every 100 ms
    while a changed Synapse setting restarts the main process, then each worker, one at a time."""
    host, deployment = stack
    token = login(host, deployment)
    units = ["synapse"] + [w.unit for w in synapse_workers.workers(deployment.settings)]

    def started(unit):
        return int(sh(host, f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").strip())

    before = {u: started(u) for u in units}
    failures, polls, stop = [], [], threading.Event()

    def poll():
        while not stop.is_set():
            for path, auth in (("/_matrix/client/versions", None), ("/_matrix/client/v3/sync?timeout=0", token)):
                try:
                    status, body = fetch(host, "GET", path, token=auth)
                except OSError as error:
                    status, body = None, str(error)
                polls.append(path)
                if status != 200:
                    failures.append((time.strftime("%X"), path, status, str(body)[:200]))
            time.sleep(0.1)

    LAB_SETTINGS.write_text(
        json.dumps({"synapse_workers": WORKERS, "synapse_extra_config": {"max_upload_size": "49M"}})
    )
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        run = pyinfra()
    finally:
        stop.set()
        poller.join()
    assert run.returncode == 0, run.stdout[-3000:]
    after = {u: started(u) for u in units}
    assert all(after[u] > before[u] for u in units), (before, after)
    assert [u for u, _ in sorted(after.items(), key=lambda item: item[1])] == units  # main first, then in turn
    assert len(polls) > 50 and failures == [], failures[:10]
