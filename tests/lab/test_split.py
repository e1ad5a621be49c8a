"""The split layout end to end: one lab host per role (db, mas, synapse, proxy), real services, real HTTPS.

The hosts are named by name, as most inventories do: each host's internal address is its inventory
name (lab-db, lab-mas...), which the hosts resolve through their /etc/hosts and this machine does
not resolve at all. Checks that the roles find each other over the internal network, that what is
rendered from those names is valid for the program reading it (MAS's trusted_proxies and pg_hba
take networks), and that each service binds only loopback and, where another role must reach it,
its host's internal address. Debian 13, deployed as root (the single-host tests use the sudo user).
"""

import json
import re
import socket
import ssl
import subprocess
import time

import pg8000.native
import pytest
import yaml

from matrix_deploy import lab
from matrix_deploy.engine import host_state
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.synapse import locks
from tests.support.lab import LAB_SETTINGS, ROOT, changed_operations, compat_login, fetch, pyinfra, ssh

pytestmark = pytest.mark.lab

# What each role's host may listen on beyond loopback (its internal address), besides sshd on 22.
INTERNAL_PORTS = {"db": {5432}, "mas": {8080, 9300}, "synapse": {8008, 9100}, "proxy": {80, 443}}  # 9100, 9300: metrics


@pytest.fixture(scope="module")
def split():
    lab.down()
    LAB_SETTINGS.unlink(missing_ok=True)
    hosts = {h.roles[0]: h for h in lab.up("split", release="13", login="root")}
    prepare_release()
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-3000:]
    yield hosts, build(ROOT / "inventories/lab.py"), first.stdout
    lab.down()


STAGES = ["Host base", "Firewall", "PostgreSQL", "matrix-authentication-service", "Synapse", "nginx", "MAS admin user"]


def test_each_stage_is_done_on_every_host_before_the_next_starts(split):
    """pyinfra interleaves hosts' operations unless each stage ends with a barrier (matrix_deploy.engine.stages)."""
    started = re.findall(r"^--> Starting operation: (.+?) \| ", split[2], re.M)
    order = [STAGES.index(name) for name in started if name in STAGES]
    assert len(set(order)) == len(STAGES) and order == sorted(order), started


def test_a_user_logs_in_at_the_proxy_and_synapse_on_another_host_accepts_the_token(split):
    hosts, deployment, _ = split
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": deployment.settings.admin_user},
        "password": deployment.secrets["admin_password"],
    }
    status, login = compat_login(hosts["proxy"], body)
    assert status == 200, login
    status, me = fetch(hosts["proxy"], "GET", "/_matrix/client/v3/account/whoami", token=login["access_token"])
    assert (status, me["user_id"]) == (200, "@admin:lab.test"), me


def test_each_service_binds_loopback_and_only_the_internal_address_its_clients_need(split):
    hosts, _, _ = split
    for role, host in hosts.items():
        listening = ssh(host, "ss -Hltn | awk '{print $4}'").stdout.split()
        assert listening, role
        for address in listening:
            ip, port = re.fullmatch(r"\[?(.*?)\]?:(\d+)", address).groups()
            if ip in ("127.0.0.1", "::1") or port == "22" or ip.startswith("127.0.0."):
                continue
            wildcard_ok = role == "proxy" and ip in ("0.0.0.0", "*", "::")
            assert ip == host.address or wildcard_ok, (role, address)
            assert int(port) in INTERNAL_PORTS[role], (role, address)


def test_the_inventory_names_hosts_by_name_and_this_machine_cannot_resolve_them(split):
    hosts, deployment, _ = split
    assert deployment.settings.placement.addresses == {h.name: h.name for h in hosts.values()}
    for host in hosts.values():
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(host.name, 22)


def test_names_are_rendered_as_networks_where_programs_need_them(split):
    hosts, _, _ = split
    mas_config = yaml.safe_load(ssh(hosts["mas"], "cat /etc/mas/config.yaml").stdout)
    assert mas_config["http"]["trusted_proxies"] == ["127.0.0.1/8", "::1/128", f"{hosts['proxy'].address}/32"]
    assert mas_config["matrix"]["endpoint"] == "http://lab-synapse:8008/"
    hba = ssh(hosts["db"], "cat /etc/postgresql/*/main/pg_hba.conf").stdout
    for role in ("mas", "synapse"):
        assert re.search(rf"^host\s+{role}\s+{role}\s+{re.escape(hosts[role].address)}/32\s+scram-sha-256$", hba, re.M)


def test_postgres_takes_logins_from_synapse_and_mas_hosts_only(split):
    hosts, deployment, _ = split
    ok = ssh(hosts["synapse"], "PGPASSFILE=/etc/synapse/secrets/pgpass psql -h lab-db -U synapse -c 'select 1' synapse")
    assert ok.returncode == 0, ok.stderr
    # This machine is on the same network but is no MAS or Synapse host: the firewall drops it, and behind the
    # firewall (opened to it here for a moment, by hand) pg_hba refuses it.
    with pytest.raises(pg8000.native.InterfaceError):
        pg8000.native.Connection("synapse", host=hosts["db"].address, database="synapse", password="x", timeout=5)
    ssh(hosts["db"], f"nft insert rule inet matrix_deploy input ip saddr {lab.network.GATEWAY} tcp dport 5432 accept")
    try:
        with pytest.raises(pg8000.native.DatabaseError, match="no pg_hba.conf entry"):
            pg8000.native.Connection(
                "synapse", host=hosts["db"].address, database="synapse",
                password=deployment.secrets["synapse_db_password"], timeout=10,
            )  # fmt: skip
    finally:
        ssh(hosts["db"], "systemctl restart matrix-deploy-firewall")  # the confirmed rules, whole


def test_second_split_run_changes_nothing(split):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def test_a_host_on_an_unsupported_release_is_refused_and_left_untouched(split):
    hosts, _, _ = split
    proxy = hosts["proxy"]
    fake = ssh(proxy, "cp /etc/os-release /root/os-release.real && sed -i 's/^VERSION_ID=.*/VERSION_ID=\"11\"/'"
                      " /etc/os-release && touch /root/before && sleep 1")  # fmt: skip
    assert fake.returncode == 0, fake.stderr
    try:
        result = pyinfra()
        touched = ssh(proxy, "find /etc /opt /var/lib /var/backups /home /root -xdev -newer /root/before -print")
    finally:
        ssh(proxy, "cp /root/os-release.real /etc/os-release")
    assert result.returncode != 0
    assert "lab-proxy runs debian 11 (from /etc/os-release); matrix-deploy supports Debian 12" in result.stdout
    assert touched.returncode == 0 and touched.stdout.split() == [], touched.stdout


def test_a_second_run_against_a_host_another_run_holds_stops_naming_the_holder(split):
    """The run lock as a live run holds it: taken by host_state's own locking shell over a live SSH session."""
    hosts, _, _ = split
    db = hosts["db"]
    holder = subprocess.Popen(
        ["ssh", "-i", db.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", f"root@{db.address}", "sh"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder.stdin.write(host_state._locking("the test's holder") + "\necho locked\n")
    holder.stdin.flush()
    try:
        assert holder.stdout.readline() == "locked\n"
        result = pyinfra()
    finally:
        holder.stdin.close()  # the session ends, and with it the lock
        holder.wait(timeout=30)
    assert result.returncode != 0
    assert "lab-db: another deploy is running against this host (the test's holder since" in result.stdout
    assert "Starting operation" not in result.stdout, "nothing ran on any host"
    assert pyinfra().returncode == 0, "the lock went with the holder's connection"


def test_synapses_virtualenv_is_exactly_its_lock(split):
    hosts, deployment, _ = split
    version = deployment.settings.synapse_version
    frozen = ssh(hosts["synapse"], "/opt/synapse/current/bin/pip freeze --all --disable-pip-version-check")
    assert frozen.returncode == 0, frozen.stderr
    installed, locked = locks.pins(frozen.stdout), locks.pins(locks.path(version).read_text())
    for tool in ("pip", "setuptools", "wheel"):  # the virtualenv's own, unless the lock pins them
        if tool not in locked:
            installed.pop(tool, None)
    assert installed == locked


def test_a_dry_run_with_diff_shows_the_config_change_masks_secrets_and_changes_nothing(split):
    hosts, deployment, _ = split
    LAB_SETTINGS.write_text(json.dumps({"synapse_extra_config": {"max_upload_size": "20M"}}))
    try:
        plan = pyinfra("--dry", "--diff")
    finally:
        LAB_SETTINGS.unlink()
    assert plan.returncode == 0, plan.stdout[-3000:]
    assert "Will modify /etc/synapse/homeserver.yaml" in plan.stdout
    assert re.search(r"^\s+\+max_upload_size: 20M$", plan.stdout, re.M), plan.stdout[-3000:]
    assert "max_upload_size" not in ssh(hosts["synapse"], "cat /etc/synapse/homeserver.yaml").stdout
    for value in deployment.secrets.values.values():
        for fragment in [value.strip(), *value.splitlines()]:
            assert len(fragment) < 8 or fragment not in plan.stdout


def test_the_same_deployment_from_an_age_encrypted_store_changes_nothing(split, tmp_path):
    hosts, deployment, _ = split
    identity = tmp_path / "age.key"
    secrets_store.main(["keygen", str(identity)])
    assert secrets_store.main(["encrypt", str(deployment.secrets_file), str(identity)]) == 0
    sealed = deployment.secrets_file.with_name(deployment.secrets_file.name + ".age")
    LAB_SETTINGS.write_text(json.dumps({"secrets_age_identity": str(identity)}))
    try:
        again = pyinfra()
        assert build(ROOT / "inventories/lab.py").secrets == deployment.secrets
    finally:
        LAB_SETTINGS.unlink()
        # Back to the plain store for whatever runs next.
        secrets_store.write(deployment.secrets_file, secrets_store.load(sealed, [], identity).values)
        sealed.unlink()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def verify(hosts, ca_file) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv/bin/matrix-deploy"), "verify", "inventories/lab.py", "--connect", hosts["proxy"].address,
         "--ca-file", str(ca_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def failed_checks(result) -> list[str]:
    return sorted(re.findall(r"^FAIL (.+?)\s{2,}", result.stdout, re.M))


def test_verify_passes_on_the_healthy_deployment_and_names_what_breaks(split, tmp_path):
    """`matrix-deploy verify` from this machine, through the proxy, trusting the deployment's own certificate."""
    hosts, _, _ = split
    proxy, mas_host, synapse_host = hosts["proxy"], hosts["mas"], hosts["synapse"]
    ca_file = lab.LAB_DIR / "acme-root.pem"  # the lab's ACME server's root: a real chain check
    healthy = verify(hosts, ca_file)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    # 12, the firewall of each host, and each finding of MAS's doctor.
    assert re.search(r"^(\d+) of \1 checks passed$", healthy.stdout, re.M) and "MAS doctor on lab-mas" in healthy.stdout

    def verify_without(host, unit):
        assert ssh(host, f"systemctl stop {unit}").returncode == 0
        try:
            return verify(hosts, ca_file)
        finally:
            assert ssh(host, f"systemctl start {unit}").returncode == 0

    no_mas = verify_without(mas_host, "mas")
    assert no_mas.returncode == 1
    assert "compat login answered by MAS" in failed_checks(no_mas), no_mas.stdout
    assert not any(name.startswith(("TLS", "client versions", "federation")) for name in failed_checks(no_mas))

    no_synapse = verify_without(synapse_host, "synapse")
    assert no_synapse.returncode == 1
    assert {"client versions", "federation server keys", "federation version"} <= set(failed_checks(no_synapse))
    assert not any(name.startswith("TLS") for name in failed_checks(no_synapse)), no_synapse.stdout

    wrong = ssh(proxy, "cd /etc/nginx/tls && mv matrix-deploy.crt crt.real && mv matrix-deploy.key key.real"
                       " && openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=wrong.test"
                       " -keyout matrix-deploy.key -out matrix-deploy.crt 2>/dev/null && systemctl reload nginx")  # fmt: skip
    assert wrong.returncode == 0, wrong.stderr
    try:
        wrong_cert = verify(hosts, ca_file)
    finally:
        ssh(proxy, "cd /etc/nginx/tls && mv crt.real matrix-deploy.crt && mv key.real matrix-deploy.key"
                   " && systemctl reload nginx")  # fmt: skip
    assert wrong_cert.returncode == 1
    assert {"TLS matrix.lab.test", "TLS auth.lab.test", "TLS lab.test"} <= set(failed_checks(wrong_cert))
    for _ in range(30):  # Synapse and MAS back before the next test: the deployment is whole again
        if verify(hosts, ca_file).returncode == 0:
            break
        time.sleep(1)
    else:
        raise AssertionError("the deployment did not come back after the verify checks")


def served_certificate(proxy, name: str) -> dict:
    """The certificate nginx serves for `name`, verified against the lab's ACME root."""
    context = ssl.create_default_context(cafile=str(lab.LAB_DIR / "acme-root.pem"))
    with socket.create_connection((proxy.address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()


def test_the_proxy_serves_a_certificate_from_the_acme_server_for_every_name(split):
    hosts, deployment, _ = split
    proxy, s = hosts["proxy"], deployment.settings
    for name in (s.public_host, s.mas_public_host, s.matrix_server_name):
        cert = served_certificate(proxy, name)
        assert "Pebble" in str(cert["issuer"]), cert["issuer"]
        assert {("DNS", n) for n in (s.public_host, s.mas_public_host, s.matrix_server_name)} <= set(
            cert["subjectAltName"]
        )
    keys = ssh(proxy, "stat -L -c '%a %U' /etc/nginx/tls/matrix-deploy.key; stat -c '%a %U' /etc/letsencrypt/archive"
                      " /etc/letsencrypt/live; systemctl is-enabled certbot.timer")  # fmt: skip
    assert keys.stdout.split("\n")[:4] == ["600 root", "700 root", "700 root", "enabled"], keys.stdout


def test_a_forced_renewal_is_served_after_a_reload_not_a_restart(split):
    hosts, deployment, _ = split
    proxy, name = hosts["proxy"], deployment.settings.public_host
    before = served_certificate(proxy, name)["serialNumber"]
    main_pid = ssh(proxy, "systemctl show -p MainPID --value nginx").stdout
    # As certbot.timer's unit runs it (its environment from our drop-in), but forced.
    renew = ssh(
        proxy,
        "env $(systemctl show -p Environment --value certbot.service) certbot renew --force-renewal --no-random-sleep-on-renew -q",
    )
    assert renew.returncode == 0, renew.stderr
    for _ in range(50):
        if served_certificate(proxy, name)["serialNumber"] != before:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the renewed certificate is not served")
    assert ssh(proxy, "systemctl show -p MainPID --value nginx").stdout == main_pid, "nginx was reloaded, not restarted"
    again = pyinfra()
    assert again.returncode == 0 and changed_operations(again.stdout) == [], "a renewal is no change to the deploy"
