"""End to end: the real deploy into a fresh lab host, then real requests over HTTPS through nginx.

PostgreSQL, Synapse and nginx are the real ones. MAS is the tests' stand-in release (the real one
cannot be downloaded here), installed through the product's local-file path with its sha256 checked.
"""

import json
import re
import socket
import subprocess

import pytest

from matrix_deploy import lab
from matrix_deploy.inventory import build
from tests.lab_release import prepare as prepare_release
from tests.lab_support import (
    LAB_SETTINGS,
    ROOT,
    SERVICES,
    CommandLines,
    changed_operations,
    fetch,
    pyinfra,
    service_stamps,
    ssh,
    unit_of,
)

pytestmark = pytest.mark.lab
# systemd-analyze's exposure score (0 best, 10 worst) each unit must stay at or under: "OK" is up to 4.9.
EXPOSURE_LIMIT = 4.9


@pytest.fixture(scope="module")
def stack():
    lab.down()
    LAB_SETTINGS.unlink(missing_ok=True)
    (host,) = lab.up("single")
    prepare_release()
    with CommandLines(host) as sampled:
        first = pyinfra()
    first.command_lines = sampled.lines
    assert first.returncode == 0, first.stdout[-3000:]
    deployment = build(ROOT / "inventories/lab.py")
    yield host, first, deployment
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def login(host, deployment, password=None):
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": deployment.settings.admin_user},
        "password": password or deployment.secrets["admin_password"],
    }
    return fetch(host, "POST", "/_matrix/client/v3/login", body)


def test_client_versions_come_from_synapse(stack):
    host, _, _ = stack
    status, body = fetch(host, "GET", "/_matrix/client/versions")
    assert status == 200
    assert "v1.11" in body["versions"] and "unstable_features" in body


def test_login_is_answered_by_mas(stack):
    # With MAS delegation Synapse itself answers 404 here: a list of flows means MAS answered.
    host, _, _ = stack
    status, body = fetch(host, "GET", "/_matrix/client/v3/login")
    assert status == 200
    assert {"type": "m.login.password"} in body["flows"]


def test_user_logs_in_through_the_compat_layer_and_synapse_accepts_the_token(stack):
    host, _, deployment = stack
    status, session = login(host, deployment)
    assert status == 200, session
    assert session["user_id"] == "@admin:lab.test"
    status, me = fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=session["access_token"])
    assert status == 200, me
    assert me["user_id"] == "@admin:lab.test" and me["device_id"] == session["device_id"]
    assert login(host, deployment, password="not the password")[0] == 403


def test_paths_that_only_contain_the_compat_words_reach_synapse(stack):
    host, _, deployment = stack
    token = login(host, deployment)[1]["access_token"]
    for word in ("login", "logout", "refresh"):
        path = f"/_matrix/client/v3/user/@admin:lab.test/account_data/{word}"
        assert fetch(host, "PUT", path, {"stored": word}, token=token)[0] == 200
        assert fetch(host, "GET", path, token=token) == (200, {"stored": word})


def test_internal_endpoints_are_not_reachable_from_outside(stack):
    host, _, deployment = stack
    s = deployment.settings
    token = login(host, deployment)[1]["access_token"]
    for path in ("/_synapse/mas/is_localpart_available?localpart=x", "/_synapse/admin/v1/server_version", "/health"):
        assert fetch(host, "GET", path, token=token)[0] == 404, path
    assert fetch(host, "GET", "/health", vhost=s.mas_public_host)[0] == 404
    for port in (s.synapse_port, s.mas_port, s.mas_health_port, s.postgres_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host.address, port), timeout=5).close()


def test_secret_files_belong_to_their_service_only(stack):
    host, _, _ = stack
    listing = ssh(
        host,
        "stat -c '%U %G %a %n' /etc/synapse/secrets/* /etc/mas/secrets/* /etc/nginx/tls/*.key"
        " /var/lib/matrix-deploy/mas-admin-*",
    ).stdout
    modes = {line.split()[3]: tuple(line.split()[:3]) for line in listing.splitlines()}
    assert modes["/etc/synapse/secrets/mas_secret"] == ("synapse", "synapse", "400")
    assert modes["/etc/mas/secrets/matrix_secret"] == ("mas", "mas", "400")
    assert modes["/etc/nginx/tls/matrix-deploy.key"] == ("root", "root", "400")
    assert len(modes) >= 14
    # The deploy's admin API credentials are not in /etc/mas/secrets, which the mas group can traverse.
    assert not any(name.endswith(("admin_api.curl", "admin_password.json")) for name in modes)
    for path, (user, _group, mode) in modes.items():
        assert mode == "400", path
        # The admin API credentials and the admin password are for the deploy (root), not for MAS.
        root_only = path.startswith("/var/lib/matrix-deploy/")
        owner = (
            "synapse" if "/synapse/" in path else "mas" if path.startswith("/etc/mas/") and not root_only else "root"
        )
        assert user == owner, path


def test_no_world_readable_file_on_the_host_holds_a_secret(stack):
    host, _, deployment = stack
    patterns = "\n".join(_secret_fragments(deployment)) + "\n"
    upload = subprocess.run(
        ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", f"root@{host.address}", "umask 077 && cat > /root/.secret-patterns"],
        input=patterns, text=True, capture_output=True, check=True,
    )  # fmt: skip
    assert upload.returncode == 0
    found = ssh(
        host,
        "find / -xdev -type f -perm -o=r -size -2M ! -path /root/.secret-patterns -print0"
        " | xargs -0 grep -lF -f /root/.secret-patterns; rm -f /root/.secret-patterns",
    ).stdout
    assert found.strip() == "", found
    # The control: the secret files themselves do hold the secrets.
    assert deployment.secrets["matrix_shared_secret"] in ssh(host, "cat /etc/synapse/secrets/mas_secret").stdout


def _secret_fragments(deployment) -> list[str]:
    """Every secret, and every line of the multi-line ones (PEM keys)."""
    fragments = []
    for value in deployment.secrets.values.values():
        fragments += [value.strip()] + [line for line in value.splitlines() if len(line) > 20 and "-----" not in line]
    return fragments


def test_no_secret_in_the_pyinfra_output(stack):
    _, first, deployment = stack
    output = first.stdout
    assert "Grand total" in output
    for fragment in _secret_fragments(deployment):
        assert fragment not in output


def test_no_secret_on_any_command_line_during_the_install(stack):
    """Process command lines are world-readable (/proc/*/cmdline): sampled on the host and here during the install."""
    _, first, deployment = stack
    leaked = [line for line in first.command_lines for fragment in _secret_fragments(deployment) if fragment in line]
    assert not leaked, f"{len(leaked)} command line argument(s) held a secret (not shown)"


def test_every_unit_is_sandboxed_and_its_running_process_too(stack):
    host, _, _ = stack
    wanted = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}
    for unit in SERVICES.values():
        unit = unit_of(host, unit)
        shown = ssh(
            host, f"systemctl show {unit} -p {' -p '.join(wanted)} -p RestrictAddressFamilies -p MainPID"
        ).stdout
        props = dict(line.split("=", 1) for line in shown.splitlines())
        assert {k: props[k] for k in wanted} == wanted, unit
        assert set(props["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}, unit
        status = ssh(host, f"cat /proc/{props['MainPID']}/status").stdout
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), unit
        exposure = ssh(host, f"systemd-analyze security {unit} --no-pager | tail -1").stdout
        assert float(re.search(r": (\d+\.\d+) ", exposure).group(1)) <= EXPOSURE_LIMIT, exposure


def test_second_run_changes_nothing_and_restarts_nothing(stack):
    host, _, deployment = stack
    before = service_stamps(host)
    again = pyinfra("-vv")
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []
    assert service_stamps(host) == before
    for fragment in _secret_fragments(deployment):
        assert fragment not in again.stdout


def test_confirmation_for_an_unchanged_deployment_lists_no_changes(stack):
    """Without -y pyinfra first lists what it would change; unchanged: nothing, not even a conditional change."""
    result = subprocess.run(
        [str(ROOT / ".venv/bin/pyinfra"), "inventories/lab.py", "deploy.py"],
        cwd=ROOT, input="\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    listed = result.stdout.split("--> Detected changes:")[1].split("Detected changes may not")[0]
    rows = [line for line in listed.splitlines() if line.strip() and not line.strip().startswith("Operation")]
    assert rows == [], listed


def test_changing_one_synapse_setting_restarts_synapse_only(stack):
    host, _, deployment = stack
    before = service_stamps(host)
    LAB_SETTINGS.write_text(json.dumps({"synapse_extra_config": {"max_upload_size": "20M"}}))
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    after = service_stamps(host)
    assert after["synapse"] != before["synapse"]
    assert {k: v for k, v in after.items() if k != "synapse"} == {k: v for k, v in before.items() if k != "synapse"}
    assert "max_upload_size: 20M" in ssh(host, "cat /etc/synapse/homeserver.yaml").stdout
    status, me = fetch(
        host, "GET", "/_matrix/client/v3/account/whoami", token=login(host, deployment)[1]["access_token"]
    )
    assert status == 200, me


def test_drift_on_the_host_is_put_back(stack):
    """Files changed behind the deploy's back are found (host_state's snapshot) and put back; -v output stays clean."""
    host, _, deployment = stack
    live = "cat /etc/mas/secrets/matrix_secret /etc/mas/secrets/database_password /etc/nginx/conf.d/matrix-deploy.conf"
    wanted = ssh(host, live).stdout
    drift = ssh(
        host,
        "chmod 644 /etc/mas/secrets/matrix_secret && rm /etc/mas/secrets/database_password"
        " && echo '# edited by hand' >> /etc/nginx/conf.d/matrix-deploy.conf && rm /opt/synapse/current",
    )
    assert drift.returncode == 0, drift.stderr
    result = pyinfra("-v")
    assert result.returncode == 0, result.stdout[-3000:]
    changed = changed_operations(result.stdout)
    for name in ("MAS secret matrix_secret", "MAS secret database_password", "Check and install /etc/nginx"):
        assert any(name in op for op in changed), (name, changed)
    assert ssh(host, live).stdout == wanted
    assert ssh(host, "stat -c %a /etc/mas/secrets/matrix_secret").stdout.strip() == "400"
    assert ssh(host, "readlink /opt/synapse/current").stdout.strip().startswith("/opt/synapse/")
    for fragment in _secret_fragments(deployment):
        assert fragment not in result.stdout
    assert login(host, deployment)[0] == 200
    assert changed_operations(pyinfra().stdout) == []
