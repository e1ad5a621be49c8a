"""The lab tool on this machine: real systemd-nspawn hosts, real SSH, real teardown."""

import subprocess

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import network
from tests.support.lab import ssh

pytestmark = pytest.mark.lab

SPEC = [("labtest1", ("db", "mas")), ("labtest2", ("synapse", "proxy"))]


def test_two_hosts_boot_reach_each_other_and_the_mirror_then_vanish():
    hosts = lab.up(spec=SPEC)
    try:
        assert [h.name for h in hosts] == ["labtest1", "labtest2"]
        assert lab.read_hosts() == hosts, "hosts.json records what was booted"
        assert len({h.address for h in hosts}) == 2
        for host, other in (hosts, hosts[::-1]):
            state = ssh(host, "systemctl is-system-running --wait")
            assert state.stdout.strip() == "running", (host.name, state.stdout, state.stderr)
            assert ssh(host, "hostname").stdout.strip() == host.name
            # The peer by name (from /etc/hosts) and by address: its sshd answers.
            probe = f"timeout 5 bash -c 'exec 3<>/dev/tcp/{other.name}/22 && head -c 4 <&3'"
            assert ssh(host, probe).stdout == "SSH-"
            mirror = ssh(
                host, "curl -fsS -o /dev/null -w '%{http_code}' http://deb.debian.org/debian/dists/bookworm/Release"
            )
            assert mirror.stdout == "200", mirror.stderr
        # Running `up` again with the same hosts is harmless: same hosts, still reachable.
        assert lab.up(spec=SPEC) == hosts
        assert ssh(hosts[0], "true").returncode == 0
    finally:
        lab.down()
    left = lab.leftovers()
    assert left == {
        "bridge": False, "nft_table": False, "veths": [], "saved_sysctl": False,
        "containers": [], "disks": [], "hosts_file": False, "acme_server": False,
    }  # fmt: skip
    assert subprocess.run(["ip", "link", "show", network.BRIDGE], capture_output=True).returncode != 0


def test_down_with_nothing_up_is_harmless():
    lab.down()
    lab.down()
    assert not any(lab.leftovers().values())


def test_leftovers_of_a_crashed_run_are_cleaned_by_the_next_up(tmp_path):
    hosts = lab.up(spec=SPEC[:1])
    # Simulate a crash: the records are lost, the container and network stay behind.
    lab.HOSTS_FILE.unlink()
    try:
        assert lab.leftovers()["containers"] == ["labtest1"]
        again = lab.up(spec=SPEC[:1])
        assert again == hosts
        assert ssh(again[0], "systemctl is-system-running --wait").stdout.strip() == "running"
    finally:
        lab.down()
    assert not any(lab.leftovers().values())


def test_unknown_role_and_duplicate_names_are_refused_before_anything_starts():
    with pytest.raises(lab.LabError, match="unknown roles"):
        lab.up(spec=[("labtest1", ("webmail",))])
    with pytest.raises(lab.LabError, match="unique"):
        lab.up(spec=[("labtest1", ("db",)), ("labtest1", ("mas",))])
    assert not any(lab.leftovers().values())
