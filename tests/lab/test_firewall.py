"""The host firewall in the split layout (issue 22): one lab host per role plus one that is no part of the
deployment (lab-extra). From this machine only the public ports answer; from each deployment host exactly the
ports its role needs answer on the others; from lab-extra no internal port answers; an operator's own nftables
table survives a run; rules that would cut SSH are rolled back by themselves; a second run changes nothing."""

import json
import re
import subprocess
import time
import warnings

import pytest

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from tests.support.lab import LAB_SETTINGS, ROOT, answers_from, answers_here, changed_operations, pyinfra, sh, ssh

pytestmark = pytest.mark.lab

SPEC = [*lab.LAYOUTS["split"], ("lab-extra", ())]
# Each role's internal ports (9100, 9300: metrics; no scrapers named, so nobody may reach them).
INTERNAL = {"db": [5432], "mas": [8080, 9300], "synapse": [8008, 9100]}
PUBLIC = {"db": [22], "mas": [22], "synapse": [22], "proxy": [22, 80, 443]}
# (client role, server role, port): what each role's host must reach on another; every other pair is refused.
NEEDED = {("mas", "db", 5432), ("synapse", "db", 5432), ("proxy", "mas", 8080), ("synapse", "mas", 8080),
          ("proxy", "synapse", 8008), ("mas", "synapse", 8008)}  # fmt: skip


@pytest.fixture(scope="module")
def split():
    lab.down()
    LAB_SETTINGS.unlink(missing_ok=True)
    hosts = {(h.roles or ("extra",))[0]: h for h in lab.up("split", spec=SPEC, release="13", login="sudo")}
    prepare_release()
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-3000:]
    yield hosts, build(ROOT / "inventories/lab.py")
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def test_from_this_machine_only_the_public_ports_answer(split):
    hosts, _ = split
    for role, host in hosts.items():
        public, internal = PUBLIC.get(role, [22]), INTERNAL.get(role, [])
        # The services listen on their internal addresses (test_split), and the firewall drops what comes.
        expected = {**dict.fromkeys(public, "open"), **dict.fromkeys(internal, "dropped")}
        assert answers_here(host.address, [*public, *internal]) == expected, role


def test_each_deployment_host_reaches_exactly_what_its_role_needs(split):
    hosts, _ = split
    for client in ("db", "mas", "synapse", "proxy"):
        for server, ports in INTERNAL.items():
            if server == client:
                continue
            expected = {port: "open" if (client, server, port) in NEEDED else "dropped" for port in ports}
            assert answers_from(hosts[client], hosts[server].name, ports) == expected, (client, server)


def test_a_host_that_is_no_part_of_the_deployment_reaches_no_internal_port(split):
    hosts, _ = split
    for server, ports in INTERNAL.items():
        assert answers_from(hosts["extra"], hosts[server].name, ports) == dict.fromkeys(ports, "dropped"), server
    assert answers_from(hosts["extra"], hosts["proxy"].name, [443]) == {443: "open"}


def test_the_firewall_is_loaded_at_boot_from_the_confirmed_rules(split):
    hosts, _ = split
    for role in ("db", "mas", "synapse", "proxy"):
        host = hosts[role]
        assert sh(
            host, "systemctl is-enabled matrix-deploy-firewall; systemctl is-active matrix-deploy-firewall"
        ).split() == [
            "enabled",
            "active",
        ]
        assert sh(host, "ls /etc/matrix-deploy").split() == ["firewall.nft"]  # no candidate left
        assert "policy drop" in sh(host, "nft list table inet matrix_deploy")
    assert "No such file" in ssh(hosts["extra"], "nft list tables; ls /etc/matrix-deploy").stderr


def test_a_second_run_changes_nothing(split):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def test_an_operators_own_table_survives_a_run_that_changes_the_rules(split):
    hosts, _ = split
    db = hosts["db"]
    sh(db, "nft add table inet operator_own && nft add chain inet operator_own input "
           "'{ type filter hook input priority 10; }' && nft add rule inet operator_own input tcp dport 9999 counter")  # fmt: skip
    before = sh(db, "nft list table inet operator_own")
    LAB_SETTINGS.write_text(json.dumps({"firewall_open_ports": [8443]}))
    try:
        run = pyinfra()
        assert run.returncode == 0, run.stdout[-3000:]
        assert "tcp dport 8443 accept" in sh(db, "nft list table inet matrix_deploy")
        assert sh(db, "nft list table inet operator_own") == before
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)
    back = pyinfra()
    assert back.returncode == 0, back.stdout[-3000:]
    assert "8443" not in sh(db, "nft list table inet matrix_deploy")
    assert sh(db, "nft list table inet operator_own") == before
    sh(db, "nft delete table inet operator_own")


def test_firewall_false_removes_ours_only_and_true_brings_it_back(split):
    hosts, _ = split
    db = hosts["db"]
    sh(db, "nft add table inet operator_own")
    LAB_SETTINGS.write_text(json.dumps({"firewall": False}))
    try:
        off = pyinfra()
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)
    assert off.returncode == 0, off.stdout[-3000:]
    assert sh(db, "nft list tables").split() == ["table", "inet", "operator_own"]
    assert (
        ssh(db, "ls /etc/matrix-deploy/firewall.nft /etc/systemd/system/matrix-deploy-firewall.service").returncode != 0
    )
    assert answers_here(db.address, [5432]) == {5432: "open"}  # PostgreSQL listens there: only pg_hba stands in the way
    on = pyinfra()
    assert on.returncode == 0, on.stdout[-3000:]
    assert answers_here(db.address, [5432]) == {5432: "dropped"}
    assert sh(db, "systemctl is-active matrix-deploy-firewall").strip() == "active"
    sh(db, "nft delete table inet operator_own")


def fresh_ssh_works(host) -> bool:
    return subprocess.run(
        ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", f"root@{host.address}", "true"],
        capture_output=True, timeout=30,
    ).returncode == 0  # fmt: skip


def test_rules_that_would_cut_ssh_are_rolled_back_by_themselves(split):
    """firewall_ssh_port = 2222 where the inventory gives no ssh_port (so it is accepted) while sshd listens on 22:
    the fresh SSH connection fails, the run fails saying so, and the armed timer puts the previous rules back."""
    hosts, _ = split
    db = hosts["db"]
    rules_before = sh(db, "nft list table inet matrix_deploy")
    LAB_SETTINGS.write_text(json.dumps({"firewall_ssh_port": 2222}))
    try:
        run = pyinfra()
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)
    assert run.returncode != 0
    assert "a fresh SSH connection did not get through the new rules" in run.stdout, run.stdout[-3000:]
    assert "rolled back by themselves within 60 s" in run.stdout
    cut_at = time.monotonic()
    assert not fresh_ssh_works(db), "the new rules were in place, cutting new SSH connections"
    # Each host armed its own timer when its rules went in, the proxy's last: wait for every one, or the re-run
    # below cannot reach a host whose rollback is still to come (seen once in CI: lab-proxy left out).
    for each in hosts.values():
        while not fresh_ssh_works(each):
            assert time.monotonic() - cut_at < 90, f"{each.name} not rolled back within a minute and a half"
            time.sleep(2)
    assert sh(db, "nft list table inet matrix_deploy") == rules_before
    assert "2222" not in sh(db, "cat /etc/matrix-deploy/firewall.nft")  # what boot loads was never replaced
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]


def verify(hosts) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv/bin/matrix-deploy"), "verify", "inventories/lab.py", "--connect", hosts["proxy"].address,
         "--ca-file", str(lab.LAB_DIR / "acme-root.pem")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_verify_checks_the_doors_and_names_an_internal_port_opened_by_hand(split):
    hosts, _ = split
    healthy = verify(hosts)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert re.search(r"^ok\s+firewall lab-db\s+.*22 answer; 5432 closed", healthy.stdout, re.M), healthy.stdout
    sh(hosts["db"], "nft insert rule inet matrix_deploy input tcp dport 5432 accept")
    try:
        opened = verify(hosts)
    finally:
        sh(hosts["db"], "systemctl restart matrix-deploy-firewall")  # the confirmed rules, whole
    assert opened.returncode == 1
    assert re.search(r"^FAIL firewall lab-db\s+.*internal port open to this machine .*: 5432 \(PostgreSQL\)",
                     opened.stdout, re.M), opened.stdout  # fmt: skip
    assert not re.search(r"^FAIL (?!firewall lab-db)", opened.stdout, re.M), opened.stdout


def test_the_lab_hosts_trust_the_lab_acme_root_as_the_world_trusts_a_public_ca(split):
    """MAS's host fetches the server's well-known document over HTTPS with the system's CAs (as `mas-cli doctor`
    does), no CA named: the lab's ACME root is among them."""
    hosts, _ = split
    sh(hosts["mas"], "curl -fsS -o /dev/null https://lab.test/.well-known/matrix/client")


def start_again(host) -> None:
    """Start Synapse again after the test stopped it. Once (stop 36's CI rehearsal, split layout under the load of
    three labs) this start failed with "unavailable resources or another system error", not seen again in 25
    stop/start rounds by hand: the start is tried once more after reset-failed, and the first failure and its
    journal are reported as a warning (the verify output is this test's subject, not Synapse's start)."""
    first = ssh(host, "systemctl start synapse")
    if first.returncode != 0:
        journal = ssh(host, "systemctl status synapse --no-pager; journalctl -u synapse -n 40 --no-pager").stdout
        warnings.warn(f"systemctl start synapse failed once on {host.name}: {first.stderr}\n{journal}", stacklevel=1)
        sh(host, "systemctl reset-failed synapse; systemctl start synapse")


def test_verify_runs_mas_doctor_and_names_its_error_when_mas_cannot_reach_synapse(split):
    """`mas-cli doctor` on the MAS host, each finding a check; with Synapse stopped its error is named."""
    hosts, deployment = split
    healthy = verify(hosts)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert re.search(r'^ok\s+MAS doctor on lab-mas: Homeserver is reachable at "http://lab-synapse:8008/',
                     healthy.stdout, re.M), healthy.stdout  # fmt: skip
    assert re.search(r"^ok\s+MAS doctor on lab-mas: The Synapse MAS API is reachable with authentication",
                     healthy.stdout, re.M), healthy.stdout  # fmt: skip
    sh(hosts["synapse"], "systemctl stop synapse")
    try:
        broken = verify(hosts)
    finally:
        start_again(hosts["synapse"])
    assert broken.returncode == 1
    assert re.search(r"^FAIL MAS doctor on lab-mas: Can't reach the homeserver at \"http://lab-synapse:8008/",
                     broken.stdout, re.M), broken.stdout  # fmt: skip
    for value in deployment.secrets.values.values():
        assert len(value.strip()) < 8 or value.strip() not in broken.stdout + healthy.stdout
