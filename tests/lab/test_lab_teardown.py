"""A lab that always comes down (issue 23): `down` ends every process of a lab host, even one whose poweroff hangs,
and `up` first clears what an earlier lab of this index left behind (an orphaned container and its veth)."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import machines, network
from tests.support.lab import sh, ssh

pytestmark = pytest.mark.lab

SPEC = [("tdown1", ("db",))]  # one host without the proxy role: no ACME server, the quickest lab
# Stopping it never ends: the main process ignores SIGTERM and ExecStop sleeps, with no stop timeout. Poweroff
# (what SIGTERM to systemd-nspawn asks for) then waits on it far longer than `down` does.
HANGING_UNIT = """\
[Unit]
Description=a service that will not stop
[Service]
ExecStart=/bin/sh -c 'trap "" TERM; exec sleep infinity'
ExecStop=/bin/sleep infinity
TimeoutStopSec=infinity
[Install]
WantedBy=multi-user.target
"""


def _stat(pid: int) -> list[str] | None:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _container(name: str) -> tuple[int, int, set[tuple[int, str]]]:
    """The systemd-nspawn of lab host `name`, its container's init, and the container's processes (those of its PID
    namespace, each as PID and start time: a namespace's number, like a PID, is reused once it is gone)."""
    (nspawn,) = [pid for pid, host in machines.running().items() if host == name]
    (init,) = [pid for pid in _pids() if (_stat(pid) or ["", ""])[1] == str(nspawn)]
    namespace = os.readlink(f"/proc/{init}/ns/pid")
    assert namespace != os.readlink("/proc/self/ns/pid")
    members = set()
    for pid in _pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                members.add((pid, _stat(pid)[19]))
        except (OSError, TypeError):
            continue
    assert (init, _stat(init)[19]) in members
    return nspawn, init, members


def _running(members: set[tuple[int, str]]) -> list[int]:
    """Those of `members` (PID, start time) that still run (a zombie has ended)."""
    found = []
    for pid, started in sorted(members):
        state = _stat(pid)
        if state and state[19] == started and state[0] != "Z":
            found.append(pid)
    return found


def _rooted_on_the_disks() -> list[int]:
    """Processes whose root ("/") is one of this lab's disks, deleted or not: read from /proc/*/mountinfo."""
    disks = str(machines.MACHINES_DIR) + "/"
    found = []
    for pid in _pids():
        try:
            lines = open(f"/proc/{pid}/mountinfo").read().splitlines()
        except OSError:
            continue
        if any(line.split()[4] == "/" and line.split()[3].startswith(disks) for line in lines):
            found.append(pid)
    return found


def _veths(name: str) -> list[str]:
    """Host-side veths of lab host `name` (vb-/ve-<machine name>, also as the altname of a shortened one)."""
    wanted = {prefix + machines.machine_name(name) for prefix in ("vb-", "ve-")}
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    return [link["ifname"] for link in links if wanted & {link["ifname"], *link.get("altnames", [])}]


def _clean_up(containers: list[set[tuple[int, str]]]) -> None:
    """Whatever the code under test left, gone: the containers' processes, their veths, then the lab."""
    for members in containers:
        for pid in _running(members):
            os.kill(pid, signal.SIGKILL)
        while _running(members):
            time.sleep(0.1)
    while _veths(SPEC[0][0]):
        for veth in _veths(SPEC[0][0]):
            subprocess.run(["ip", "link", "delete", veth], capture_output=True)
        time.sleep(0.1)
    lab.down()


def _gone(nspawn: int) -> None:
    """Wait for a SIGKILLed systemd-nspawn to end (this process started it: collect its exit status)."""
    try:
        os.waitpid(nspawn, 0)
    except ChildProcessError:
        while (_stat(nspawn) or ["Z"])[0] != "Z":
            time.sleep(0.1)


def _assert_nothing_left(host: lab.LabHost, members: set[tuple[int, str]]) -> None:
    assert _running(members) == [], "processes of the container still run"
    assert _rooted_on_the_disks() == []
    assert _veths(host.name) == []
    assert not any(lab.leftovers().values()), lab.leftovers()
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert f"table inet {network.NFT_TABLE} {{" not in nft and f'"{network.BRIDGE}"' not in nft


def _boots() -> None:
    (host,) = lab.up(spec=SPEC)
    assert ssh(host, "systemctl is-system-running --wait").stdout.strip() == "running"


def test_a_host_whose_poweroff_hangs_leaves_nothing_behind_and_the_next_up_boots():
    (host,) = lab.up(spec=SPEC)
    containers = []
    try:
        sh(host, "cat > /etc/systemd/system/no-stop.service", input=HANGING_UNIT)
        sh(host, "systemctl daemon-reload && systemctl start no-stop && systemctl is-active no-stop")
        members = _container(host.name)[2]
        containers.append(members)
        lab.down()
        _assert_nothing_left(host, members)
        _boots()
    finally:
        _clean_up(containers)
    assert not any(lab.leftovers().values())


def test_an_orphaned_container_is_cleared_by_the_next_up():
    (host,) = lab.up(spec=SPEC)
    containers = []
    try:
        nspawn, init, members = _container(host.name)
        containers.append(members)
        # What a `down` that only SIGKILLs systemd-nspawn leaves: its container's init lives on, orphaned...
        os.kill(nspawn, signal.SIGKILL)
        _gone(nspawn)
        assert init in _running(members)
        assert _stat(init)[1] != str(nspawn)
        # ... with its network namespace and veth, after that `down` deleted its disk, the bridge and the records.
        while (machines.MACHINES_DIR / host.name).exists():  # the running container writes into it meanwhile
            shutil.rmtree(machines.MACHINES_DIR / host.name, ignore_errors=True)
        network.down()
        lab.HOSTS_FILE.unlink()
        assert _veths(host.name) != []
        assert machines.running() == {}
        _boots()
        assert _running(members) == [], "the orphaned container still runs"
        lab.down()
        _assert_nothing_left(host, members)
    finally:
        _clean_up(containers)
    assert not any(lab.leftovers().values())
