"""Past one machine (`LAYOUT=scale`, Debian 13 through the sudo user): two Synapse hosts (scale1: the main
process, Redis, a generic worker and the event persister; scale2: a generic worker and the federation sender)
and two MAS instances (one on each), behind nginx on scale1; beside them lab-extra, a host that is no part of
the deployment, for the host firewall (issue 22).

Requests go through nginx as clients send them; who served them is read from each process's own Prometheus
metrics (requests counted per servlet) and from the database (the instance that persisted each event).
"""

import json
import re
import threading
import time

import pytest

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.synapse import workers as synapse_workers
from tests.support.lab import (
    LAB_SETTINGS,
    ROOT,
    answers_from,
    answers_here,
    changed_operations,
    compat_login,
    fetch,
    pyinfra,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab

SPEC = [*lab.LAYOUTS["scale"], ("lab-extra", ())]


@pytest.fixture(scope="module")
def stack():
    lab.down()
    LAB_SETTINGS.unlink(missing_ok=True)
    hosts = {h.name: h for h in lab.up("scale", spec=SPEC) if h.roles}
    prepare_release()
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-4000:]
    yield hosts, build(ROOT / "inventories/lab.py"), first.stdout
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def login(proxy, deployment) -> str:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"},
            "password": deployment.secrets["admin_password"]}  # fmt: skip
    status, session = compat_login(proxy, body)
    assert status == 200, session
    return session["access_token"]


def served(host, port: int, servlet: str) -> float:
    """How many requests the Synapse process with metrics on `port` of `host` has counted for `servlet`."""
    text = sh(host, f"curl -fsS http://127.0.0.1:{port}/_synapse/metrics")
    found = re.findall(
        rf'^synapse_http_server_requests_received_total\{{[^}}]*servlet="{servlet}"[^}}]*\}} (\S+)$', text, re.M
    )
    return sum(float(n) for n in found)


def ran_on(pyinfra_stdout: str, operation: str) -> list[str]:
    """The hosts on which the operation named `operation` ran (Success) in a pyinfra run's output."""
    hosts = []
    for block in pyinfra_stdout.split("--> Starting operation: ")[1:]:
        if block.split("\n", 1)[0].strip().endswith(operation):
            hosts += re.findall(r"^\s+\[(\S+)\] Success", block, re.M)
    return hosts


def room_with_message(proxy, token: str, text: str) -> str:
    status, room = fetch(proxy, "POST", "/_matrix/client/v3/createRoom", {"name": text}, token=token)
    assert status == 200, room
    status, sent = fetch(proxy, "PUT", f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/{time.time_ns()}",
                         {"msgtype": "m.text", "body": text}, token=token)  # fmt: skip
    assert status == 200, sent
    status, synced = fetch(proxy, "GET", "/_matrix/client/v3/sync?timeout=0", token=token)
    assert status == 200 and room["room_id"] in synced["rooms"]["join"], synced
    return room["room_id"]


def test_workers_run_where_the_inventory_puts_them(stack):
    hosts, deployment, _ = stack
    for w in synapse_workers.workers(deployment.settings):
        assert sh(hosts[w.host], f"systemctl is-active {w.unit}").strip() == "active", w
        other = next(name for name in hosts if name != w.host)
        assert ssh(hosts[other], f"systemctl is-active {w.unit}").stdout.strip() != "active", w
    assert ssh(hosts["scale2"], "systemctl is-active synapse").stdout.strip() != "active"  # the main process: scale1


def test_clients_are_served_by_the_workers_the_routing_names(stack):
    hosts, deployment, _ = stack
    proxy = hosts["scale1"]
    ws = synapse_workers.workers(deployment.settings)
    token = login(proxy, deployment)
    room = room_with_message(proxy, token, "hello workers")
    for _ in range(10):  # round robin over both hosts' generic workers
        assert fetch(proxy, "GET", "/_matrix/client/v3/joined_rooms", token=token)[0] == 200
    generic = [w for w in ws if w.kind == "generic"]
    main = deployment.settings.synapse_metrics_port
    assert sum(served(hosts[w.host], w.metrics_port, "SyncRestServlet") for w in generic) >= 1
    assert sum(served(hosts[w.host], w.metrics_port, "RoomCreateRestServlet") for w in generic) >= 1
    assert {w.host for w in generic if served(hosts[w.host], w.metrics_port, "JoinedRoomsRestServlet")} == set(hosts)
    scale1 = hosts["scale1"]
    assert served(scale1, main, "SyncRestServlet") == 0 and served(scale1, main, "RoomCreateRestServlet") == 0
    # Every event of the room was written by the event persister, none by the main process.
    persisted = sh(scale1, "runuser -u postgres -- psql -d synapse -Atc "
                           f"\"SELECT DISTINCT instance_name FROM events WHERE room_id = '{room}'\"")  # fmt: skip
    assert persisted.split() == ["event_persister-1"], persisted


def mas_served(host, port: int, route: str) -> float:
    """How many requests the MAS instance with metrics on `port` of `host` counted on its web listener for
    routes containing `route` (its http.server.duration histogram)."""
    text = sh(host, f"curl -fsS http://127.0.0.1:{port}/metrics")
    found = re.findall(r"^http_server_duration_count\{(.*)\} (\S+)$", text, re.M)  # route templates hold braces
    return sum(float(n) for labels, n in found if 'mas_listener_name="web"' in labels and route in labels)


def test_both_mas_instances_serve_logins_and_export_metrics_internally(stack):
    hosts, deployment, _ = stack
    proxy, port = hosts["scale1"], deployment.settings.mas_metrics_port
    for _ in range(10):  # round robin over both instances
        assert fetch(proxy, "GET", "/_matrix/client/v3/login")[0] == 200
    assert all(mas_served(host, port, "/login") >= 1 for host in hosts.values())
    for host in hosts.values():
        bound = sorted(sh(host, f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split())
        assert bound == sorted([f"127.0.0.1:{port}", f"{host.address}:{port}"]), (host.name, bound)
    assert fetch(proxy, "GET", "/metrics", vhost="auth.lab.test")[0] == 404


def test_mas_migrates_and_syncs_once_for_every_instance(stack):
    hosts, _, first = stack
    assert ran_on(first, "MAS database migrations and config sync") == ["scale1"]
    assert sorted(ran_on(first, "Restart mas and wait until it is healthy")) == ["scale1", "scale2"]
    for host in hosts.values():  # no instance migrates or syncs on its own when it (re)starts
        assert "server --no-migrate --no-sync" in sh(host, "systemctl show -p ExecStart --value mas")


def test_redis_wants_the_password_and_listens_only_where_workers_reach_it(stack):
    hosts, _, _ = stack
    scale1 = hosts["scale1"]
    listening = sorted(sh(scale1, "ss -Hltnp | grep redis-server | awk '{print $4}'").split())
    assert listening == sorted(["127.0.0.1:6379", f"{scale1.address}:6379", "[::1]:6379"]), listening
    # From the other Synapse host (which has no redis-cli): reachable, and refusing without the password.
    ping = f"exec 3<>/dev/tcp/{scale1.address}/6379 && printf 'PING\\r\\n' >&3 && timeout 5 head -n 1 <&3"
    assert "NOAUTH" in ssh(hosts["scale2"], ping).stdout
    assert sh(scale1, "stat -c '%a %U %G' /etc/redis/matrix-deploy.conf").split() == ["640", "root", "redis"]
    assert ssh(hosts["scale2"], "systemctl is-active redis-server").stdout.strip() != "active"


def test_metrics_are_on_internal_addresses_only(stack):
    hosts, deployment, _ = stack
    ports = [("scale1", deployment.settings.synapse_metrics_port)]
    ports += [(w.host, w.metrics_port) for w in synapse_workers.workers(deployment.settings)]
    for name, port in ports:
        host = hosts[name]
        assert sh(host, f"curl -fsS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/_synapse/metrics") == "200"
        bound = sorted(sh(host, f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split())
        assert bound == sorted([f"127.0.0.1:{port}", f"{host.address}:{port}"]), (name, bound)
    assert fetch(hosts["scale1"], "GET", "/_synapse/metrics")[0] == 404
    assert fetch(hosts["scale1"], "GET", "/metrics")[0] == 404


def listening(host) -> set[int]:
    """The TCP ports `host` listens on at an address other hosts can reach (not loopback only)."""
    found = set()
    for local in sh(host, "ss -Hltn | awk '{print $4}'").split():
        address, port = local.rsplit(":", 1)
        if not (address.startswith("127.") or address == "[::1]"):
            found.add(int(port))
    return found


def who_may_reach(deployment) -> dict[tuple[str, int], set[str]]:
    """(server, port) -> the hosts that must reach it, as the issue says who needs what (written out here, not
    taken from the product's doors): PostgreSQL from the MAS and Synapse hosts, each MAS's web listener from the
    proxy and the Synapse hosts, the main process from the proxy, MAS and the other Synapse hosts (replication),
    the workers from the proxy and the other Synapse hosts, Redis from the other Synapse hosts. SSH (and HTTP,
    HTTPS on the proxy) is for anyone; metrics for the scrapers, none named here."""
    s = deployment.settings
    synapse = {"scale1", "scale2"}  # both Synapse hosts; both run MAS; scale1 is the proxy and the database
    needed = {("scale1", s.postgres_port): synapse, ("scale1", s.synapse_port): synapse,
              ("scale1", s.redis_port): synapse}  # fmt: skip
    for server in ("scale1", "scale2"):
        needed[server, s.mas_port] = {"scale1", *synapse}
    for w in synapse_workers.workers(s):
        needed[w.host, w.port] = {"scale1", *synapse}
    return {key: clients - {key[0]} for key, clients in needed.items()}  # a host reaches itself on loopback


def public(name: str) -> set[int]:
    return {22, 80, 443} if name == "scale1" else {22}


def test_the_firewall_opens_each_listening_port_to_exactly_the_hosts_that_need_it(stack):
    """Every port a deployment host listens on beyond loopback, tried from the other deployment host, from
    lab-extra and from this machine: open exactly where the role needs it, dropped everywhere else."""
    hosts, deployment, _ = stack
    extra = next(h for h in lab.read_hosts() if h.name == "lab-extra")
    needed = who_may_reach(deployment)
    for server, host in hosts.items():
        ports = sorted(listening(host))
        # What the issue names must listen here (so the loop below tries it), the metrics ports too.
        assert {port for (name, port) in needed if name == server} | public(server) <= set(ports), (server, ports)
        assert deployment.settings.synapse_metrics_port in ports or server != "scale1", ports
        for client in [*(c for c in hosts if c != server), "lab-extra"]:
            expected = {
                p: "open" if p in public(server) or client in needed.get((server, p), ()) else "dropped" for p in ports
            }
            source = extra if client == "lab-extra" else hosts[client]
            assert answers_from(source, server, ports) == expected, (client, server)
        assert answers_here(host.address, ports) == {p: "open" if p in public(server) else "dropped" for p in ports}


def test_a_second_run_changes_nothing(stack):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def test_with_the_second_host_stopped_clients_still_log_in_send_and_sync(stack):
    hosts, deployment, _ = stack
    scale2 = hosts["scale2"]
    units = ["mas", *(w.unit for w in synapse_workers.workers(deployment.settings) if w.host == "scale2")]
    sh(scale2, f"systemctl stop {' '.join(units)}")
    try:
        proxy = hosts["scale1"]
        for i in range(4):  # several logins and rooms: nginx's choices fall on the stopped instances too
            room_with_message(proxy, login(proxy, deployment), f"scale2 is down {i}")
    finally:
        sh(scale2, f"systemctl start {' '.join(units)}")
    for w in synapse_workers.workers(deployment.settings):
        if w.host == "scale2":
            sh(
                scale2,
                f"for i in $(seq 300); do curl -fsS http://127.0.0.1:{w.port}/health && exit 0; sleep 0.1; done; exit 1",
            )


def test_a_change_restarts_each_instance_in_turn_while_the_others_serve(stack):
    """Polling what workers serve (client versions, an authenticated /sync) and what MAS serves (the login
    flows) through nginx every 100 ms while changed Synapse and MAS settings restart each MAS instance in
    turn, then Synapse's main process, then each worker across both hosts, one at a time."""
    hosts, deployment, _ = stack
    proxy = hosts["scale1"]
    token = login(proxy, deployment)
    ws = synapse_workers.workers(deployment.settings)
    units = [("scale1", "mas"), ("scale2", "mas"), ("scale1", "synapse"), *((w.host, w.unit) for w in ws)]

    def started(name, unit):  # CLOCK_MONOTONIC: one kernel, so comparable across the lab's containers
        return int(sh(hosts[name], f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").strip())

    before = {u: started(*u) for u in units}
    failures, polls, stop = [], [], threading.Event()

    def poll():
        while not stop.is_set():
            for path, auth in (("/_matrix/client/versions", None), ("/_matrix/client/v3/sync?timeout=0", token),
                               ("/_matrix/client/v3/login", None)):  # fmt: skip
                try:
                    status, body = fetch(proxy, "GET", path, token=auth)
                except OSError as error:
                    status, body = None, str(error)
                polls.append(path)
                if status != 200:
                    failures.append((time.strftime("%X"), path, status, str(body)[:200]))
            time.sleep(0.1)

    LAB_SETTINGS.write_text(json.dumps({"synapse_extra_config": {"max_upload_size": "49M"},
                                        "mas_extra_config": {"account": {"displayname_change_allowed": False}}}))  # fmt: skip
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        run = pyinfra()
    finally:
        stop.set()
        poller.join()
    assert run.returncode == 0, run.stdout[-3000:]
    after = {u: started(*u) for u in units}
    assert all(after[u] > before[u] for u in units), (before, after)
    assert sorted(units, key=after.get) == units  # in turn, in this order
    assert len(polls) > 50 and failures == [], failures[:10]
