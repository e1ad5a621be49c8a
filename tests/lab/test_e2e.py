"""End to end: the real deploy into a fresh Debian 13 lab host through the sudo user, then real requests
over HTTPS through nginx, and what the secrets look like from every side while and after it runs.

PostgreSQL, Synapse and nginx are the real ones. MAS is the tests' stand-in release (the real one
cannot be downloaded here), installed through the product's local-file path with its sha256 checked.
The module's own host is deployed once, from a secrets store generated afresh for it.
"""

import re
import socket
import subprocess
import threading

import pytest

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.nginx import service as nginx
from tests.support.lab import (
    LAB_SETTINGS,
    ROOT,
    CommandLines,
    Watcher,
    changed_operations,
    compat_login,
    fetch,
    fresh_secrets,
    holding_secrets,
    lab_settings,
    postgres_unit,
    pyinfra,
    readable_files_holding,
    secret_fragments,
    service_stamps,
    services,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab
# systemd-analyze's exposure score (0 best, 10 worst) each unit must stay at or under: "OK" is up to 4.9.
EXPOSURE_LIMIT = 4.9

# Every file in the directories that hold secrets, and every secret file elsewhere, on a single host in
# native mode with admin_user: path -> (owner, group, mode). A missing, extra or stale file fails.
SECRET_DIRS = {
    "/etc/synapse/secrets": ("root", "synapse", "750"),
    "/etc/mas/secrets": ("root", "mas", "750"),
    "/etc/nginx/tls": ("root", "root", "700"),
}
SECRET_FILES = {
    "/etc/synapse/secrets/signing.key": ("synapse", "synapse", "400"),
    "/etc/synapse/secrets/macaroon_secret_key": ("synapse", "synapse", "400"),
    "/etc/synapse/secrets/form_secret": ("synapse", "synapse", "400"),
    "/etc/synapse/secrets/mas_secret": ("synapse", "synapse", "400"),
    "/etc/synapse/secrets/pgpass": ("synapse", "synapse", "400"),
    "/etc/mas/secrets/matrix_secret": ("mas", "mas", "400"),
    "/etc/mas/secrets/database_password": ("mas", "mas", "400"),
    "/etc/mas/secrets/encryption_key": ("mas", "mas", "400"),
    "/etc/mas/secrets/signing_rsa.pem": ("mas", "mas", "400"),
    "/etc/mas/secrets/signing_ec.pem": ("mas", "mas", "400"),
    "/etc/mas/secrets/admin_client_secret": ("mas", "mas", "400"),
    # The admin API credentials and the admin password are for the deploy (root), not for MAS.
    "/var/lib/matrix-deploy/mas-admin-api.curl": ("root", "root", "400"),
    "/var/lib/matrix-deploy/mas-admin-password.json": ("root", "root", "400"),
    # Links into certbot's lineage (tls = acme): the key is certbot's, 0600 in its 0700 archive.
    "/etc/nginx/tls/matrix-deploy.key": ("root", "root", "600"),
    "/etc/nginx/tls/matrix-deploy.crt": ("root", "root", "644"),  # not a secret: the certificate
    "/etc/nginx/tls/acme-directory-ca.pem": ("root", "root", "644"),  # not a secret: the lab ACME API's CA
    # The roles and passwords for PostgreSQL: root's, fed to psql on its standard input.
    "/var/lib/matrix-deploy/postgres-roles.sql": ("root", "root", "400"),
}
# Operations that upload a secret file (all of them, when the host lost its secret files).
SECRET_UPLOADS = [
    *(
        f"Synapse secret {name}"
        for name in ("signing.key", "macaroon_secret_key", "form_secret", "mas_secret", "pgpass")
    ),
    *(
        f"MAS secret {n}"
        for n in (
            "matrix_secret",
            "database_password",
            "encryption_key",
            "signing_rsa.pem",
            "signing_ec.pem",
            "admin_client_secret",
        )
    ),  # fmt: skip
    "MAS admin API client credentials",
    "MAS admin password",
    "Roles and databases for Synapse and MAS",
]
# The configs of every service, as the operations that put them back name them.
CONFIGS = [
    "PostgreSQL listens where MAS and Synapse reach it",
    "PostgreSQL client authentication",
    "Check and install /etc/mas/config.yaml",
    "Check and install /etc/synapse/homeserver.yaml",
    "Synapse log config",
    "Check and install /etc/nginx/conf.d/matrix-deploy.conf",
]


def run_watched(host, fragment: str, start_at: str = "Starting operation: Synapse | "):
    """The deploy, while another local user copies what it can read and command lines are traced; when
    `start_at` shows in the output (mid-install, secrets uploaded, pip to come), the controls run."""
    with Watcher(host) as watcher, CommandLines(host) as sampled:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/pyinfra"), "-y", "inventories/lab.py", "deploy.py"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        lines, controls = [], []
        for line in proc.stdout:
            lines.append(line)
            if start_at in line and not controls:

                def fire():
                    controls.append(watcher.short_lived_control(fragment))
                    sampled.control(fragment)

                controls.append(threading.Thread(target=fire))
                controls[0].start()
        proc.wait()
        assert controls, f"{start_at!r} never came"
        controls[0].join()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines))
    return result, watcher, sampled, controls[1]


@pytest.fixture(scope="module")
def stack():
    lab.down()
    fresh_secrets()  # a CI run generates fresh secrets at least once: here
    (host,) = lab.up("single")  # Debian 13, deployed through the sudo user
    assert (host.release, host.deploy_user) == ("13", "deploy")
    lab_settings(host)
    prepare_release()
    deployment = build(ROOT / "inventories/lab.py")  # generates the store the deploy will use, as its check() does
    fragments = secret_fragments(deployment.secrets.values)
    # The controls hold 12 characters of the signing key's seed: a part of a secret is found, not only a whole one.
    seed = deployment.secrets["synapse_signing_key"].split()[2][8:20]
    first, watcher, sampled, control_file = run_watched(host, seed)
    first.watched = watcher.found(fragments)
    first.control_file = control_file
    first.sampled = sampled
    first.seed = seed
    assert first.returncode == 0, first.stdout[-3000:]
    yield host, first, deployment
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def login(host, deployment, password=None):
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": deployment.settings.admin_user},
        "password": password or deployment.secrets["admin_password"],
    }
    return compat_login(host, body)


def fragments_of(deployment) -> list[str]:
    return secret_fragments(deployment.secrets.values)


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
    for port in (s.synapse_port, s.mas_port, s.mas_internal_port, s.postgres_port):
        # Refused (nothing listens beyond loopback) or dropped by the host firewall.
        with pytest.raises((ConnectionRefusedError, TimeoutError)):
            socket.create_connection((host.address, port), timeout=5).close()


def test_exactly_the_expected_secret_files_with_their_owners_and_modes(stack):
    host, _, _ = stack
    listed = sh(host, f"find -L {' '.join(SECRET_DIRS)} -mindepth 1 -printf '%u %g %m %p\\n'")
    others = [p for p in SECRET_FILES if not any(p.startswith(d + "/") for d in SECRET_DIRS)]
    listed += sh(host, f"stat -c '%U %G %a %n' {' '.join(others)}")
    found = {line.split(" ", 3)[3]: tuple(line.split(" ", 3)[:3]) for line in listed.splitlines()}
    assert found == SECRET_FILES
    dirs = sh(host, f"stat -c '%U %G %a %n' {' '.join(SECRET_DIRS)}")
    assert {line.split(" ", 3)[3]: tuple(line.split(" ", 3)[:3]) for line in dirs.splitlines()} == SECRET_DIRS


def test_no_other_local_user_could_read_a_secret_while_the_install_ran(stack):
    """A local user (`watcher`) copied every file it could read under /tmp, /run, /etc, /var/lib... during the
    whole install; none of its copies holds a secret, except the control: a world-readable file that
    held one secret fragment for 0.2 s in /tmp, mid-install."""
    _, first, _ = stack
    assert first.control_file in first.watched, "the watch missed its control: it proves nothing"
    leaked = sorted(first.watched - {first.control_file})
    assert not leaked, f"another local user read a secret in: {leaked}"


def test_after_the_install_no_file_another_user_can_read_holds_a_secret(stack):
    """Every filesystem (tmpfs included), any size, only /proc and /sys skipped; the controls go through
    the same pipeline: a file on a tmpfs and a 3 MB file with the secret at its end."""
    host, _, deployment = stack
    fragment = deployment.secrets["matrix_shared_secret"][5:17]  # 12 characters of it
    controls = ["/dev/shm/search-control", "/var/tmp/search-control-large"]
    sh(host, f"umask 022; cat > {controls[0]}", input=fragment + "\n")
    sh(host, f"umask 022; head -c 3000000 /dev/zero | tr '\\0' x > {controls[1]}; cat >> {controls[1]}", input=fragment)
    try:
        found = readable_files_holding(host, fragments_of(deployment))
    finally:
        sh(host, f"rm -f {' '.join(controls)}")
    assert set(controls) <= found, f"the search missed its controls {set(controls) - found}: it proves nothing"
    assert found == set(controls), f"files another local user can read hold a secret: {sorted(found - set(controls))}"


def test_no_secret_in_the_output_of_the_fresh_install(stack):
    _, first, deployment = stack
    assert "Grand total" in first.stdout
    assert not holding_secrets(first.stdout.splitlines(), fragments_of(deployment))


def test_no_secret_on_any_command_line_during_the_install(stack):
    """Command lines are world-readable (/proc/*/cmdline): every exec here and on the host was traced during the
    install; the controls (processes of about 10 ms on the host, one holding 12 characters of the signing key's
    seed) were all seen and matched."""
    _, first, deployment = stack
    sampled = first.sampled
    assert sampled.tracer.overflows == 0, "the exec tracer lost events"
    assert sampled.controls_seen() == {str(i) for i in range(1, sampled.CONTROLS + 1)} | {"secret"}
    controls = [line for line in sampled.traced if f"{sampled.marker}-secret" in line]
    assert holding_secrets(controls, fragments_of(deployment)), "12 characters of the seed are not matched"
    leaked = holding_secrets(sampled.without_controls(), fragments_of(deployment))
    assert not leaked, f"{len(leaked)} command line(s) held a secret (not shown)"


def test_every_unit_is_sandboxed_and_its_running_process_too(stack):
    host, _, _ = stack
    wanted = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}
    for unit in services(host).values():
        shown = sh(host, f"systemctl show {unit} -p {' -p '.join(wanted)} -p RestrictAddressFamilies -p MainPID")
        props = dict(line.split("=", 1) for line in shown.splitlines())
        assert {k: props[k] for k in wanted} == wanted, unit
        assert set(props["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}, unit
        status = sh(host, f"cat /proc/{props['MainPID']}/status")
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), unit
        exposure = sh(host, f"systemd-analyze security {unit} --no-pager | tail -1")
        assert float(re.search(r": (\d+\.\d+) ", exposure).group(1)) <= EXPOSURE_LIMIT, exposure


# Capabilities by bit (linux/capability.h): what nginx's master keeps.
NGINX_CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
              "CAP_NET_BIND_SERVICE": 10}  # fmt: skip
# unit key -> (User=, CapabilityBoundingSet=, process uid name, CapEff and CapBnd of the main process)
UNIT_PRIVILEGES = {
    "postgres": ("postgres", "", "postgres", "0000000000000000"),
    "mas": ("mas", "", "mas", "0000000000000000"),
    "synapse": ("synapse", "", "synapse", "0000000000000000"),
    # systemctl shows the bounding set in lower case, by bit
    "nginx": ("", " ".join(sorted(NGINX_CAPS, key=NGINX_CAPS.get)).lower(), "root", "00000000000004e3"),
}
# The system call filter: systemd's @system-service set without these groups (the unit's `~` line), compared
# with what systemd resolves from exactly this in a throwaway unit.
DENIED_SYSCALLS = {
    "postgres": "@privileged",
    "mas": "@privileged @resources",
    "synapse": "@privileged @resources",
    "nginx": "@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
}


def test_each_unit_runs_as_its_user_with_exactly_its_capabilities_and_system_calls(stack):
    host, _, _ = stack
    assert sum(1 << bit for bit in NGINX_CAPS.values()) == 0x4E3

    def reference_filter(key: str) -> str:
        """The filter systemd resolves from the literal spec above, in a throwaway unit on the same host."""
        ref = f"md-test-filter-{key}"
        spec = f"-p SystemCallFilter=@system-service -p 'SystemCallFilter=~{DENIED_SYSCALLS[key]}'"
        sh(host, f"systemd-run --quiet --unit={ref} -p RemainAfterExit=yes {spec} /bin/true")
        try:
            return sh(host, f"systemctl show {ref} -p SystemCallFilter --value")
        finally:
            sh(host, f"systemctl stop {ref}")

    for key, unit in services(host).items():
        user, bounding, uid_name, caps = UNIT_PRIVILEGES[key]
        props = dict(
            line.split("=", 1)
            for line in sh(host, f"systemctl show {unit} -p User -p CapabilityBoundingSet -p MainPID").splitlines()
        )
        assert props["User"] == user, unit
        assert props["CapabilityBoundingSet"] == bounding, unit
        status = sh(host, f"cat /proc/{props['MainPID']}/status")
        assert re.search(rf"^CapEff:\s+{caps}$", status, re.M), (unit, re.findall(r"^Cap\w+:.*$", status, re.M))
        assert re.search(rf"^CapBnd:\s+{caps}$", status, re.M), unit
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M).groups()
        assert {sh(host, f"id -nu {u}").strip() for u in uid} == {uid_name}, unit
        assert re.search(r"^Seccomp:\s+2$", status, re.M), f"{unit}: no system call filter on the running process"
        allowed = set(sh(host, f"systemctl show {unit} -p SystemCallFilter --value").split())
        wanted = set(reference_filter(key).split())
        assert len(wanted) > 200, wanted
        assert allowed == wanted, (unit, sorted(allowed ^ wanted)[:20])


def _nginx_test(host, site: str) -> subprocess.CompletedProcess:
    """`nginx -t` of a rendered site in the lab host (which has the real nginx), with a throwaway certificate."""
    d = "/root/nginx-test"
    sh(host, f"rm -rf {d} && mkdir -p {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test"
             f" -keyout {d}/tls.key -out {d}/tls.crt 2>/dev/null")  # fmt: skip
    site = site.replace(nginx.CERTIFICATE_KEY, f"{d}/tls.key").replace(nginx.CERTIFICATE, f"{d}/tls.crt")
    sh(host, f"cat > {d}/site.conf", input=site)
    conf = (
        f"pid {d}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n include /etc/nginx/mime.types;\n access_log off;\n include {d}/site.conf;\n}}\n"
    )
    sh(host, f"cat > {d}/nginx.conf", input=conf)
    return ssh(host, f"nginx -t -p {d} -c {d}/nginx.conf")


def test_rendered_nginx_site_is_accepted_by_nginx(stack, deployment):
    """The site for another deployment than the lab's (example.org, tests/conftest.py) through the real nginx -t."""
    host, _, _ = stack
    result = _nginx_test(host, nginx.render_site(deployment, "hs1"))
    assert result.returncode == 0, result.stderr
    broken = nginx.render_site(deployment, "hs1").replace("location / { return 404; }", "location / {", 1)
    assert _nginx_test(host, broken).returncode != 0, "nginx -t here does not catch a broken site"


def test_second_run_changes_nothing_and_restarts_nothing(stack):
    host, _, deployment = stack
    before = service_stamps(host)
    again = pyinfra("-vv")
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []
    assert service_stamps(host) == before
    assert not holding_secrets(again.stdout.splitlines(), fragments_of(deployment))


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
    lab_settings(host, synapse_extra_config={"max_upload_size": "20M"})
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    after = service_stamps(host)
    assert after["synapse"] != before["synapse"]
    assert {k: v for k, v in after.items() if k != "synapse"} == {k: v for k, v in before.items() if k != "synapse"}
    assert "max_upload_size: 20M" in sh(host, "cat /etc/synapse/homeserver.yaml")
    status, me = fetch(
        host, "GET", "/_matrix/client/v3/account/whoami", token=login(host, deployment)[1]["access_token"]
    )
    assert status == 200, me


@pytest.mark.parametrize("verbosity", ["", "-v", "-vv", "--diff"])
def test_no_secret_in_the_output_of_a_run_that_uploads_every_secret_and_changes_every_config(stack, verbosity):
    """The host lost every secret file, each config was edited by hand and a setting of each service changed:
    the run uploads every secret and puts every config back, and its output holds none of the secrets."""
    host, _, deployment = stack
    pg_conf = f"/etc/postgresql/{postgres_unit(host).split('@')[1].split('-')[0]}/main"
    edited = ["/etc/nginx/conf.d/matrix-deploy.conf", f"{pg_conf}/conf.d/matrix-deploy.conf", f"{pg_conf}/pg_hba.conf",
              "/etc/synapse/log.yaml"]  # fmt: skip
    sh(host, f"rm {' '.join(p for p in SECRET_FILES if not p.startswith('/etc/nginx/tls'))}")
    sh(host, " && ".join(f"echo '# edited by hand' >> {p}" for p in edited))
    size = f"{len(verbosity) + 21}M"  # a different value on each run
    lab_settings(
        host, synapse_extra_config={"max_upload_size": size}, mas_extra_config={"branding": {"service_name": size}}
    )
    if verbosity == "-v":  # drift of other kinds, put back too
        sh(host, "rm /opt/synapse/current")
    result = pyinfra(*([verbosity] if verbosity else []))
    assert result.returncode == 0, result.stdout[-3000:]
    changed = changed_operations(result.stdout)
    for name in SECRET_UPLOADS + CONFIGS:
        assert any(name in op for op in changed), (name, changed)
    assert not holding_secrets(result.stdout.splitlines(), fragments_of(deployment)), "a secret is in the output"
    if verbosity == "--diff":
        assert f"max_upload_size: {size}" in result.stdout, "--diff showed no diff at all"
    if verbosity == "-vv":
        assert "sudo" in result.stdout, "-vv shows the commands it runs"
    assert f"max_upload_size: {size}" in sh(host, "cat /etc/synapse/homeserver.yaml")
    assert sh(host, "readlink /opt/synapse/current").strip().startswith("/opt/synapse/")
    assert "# edited by hand" not in sh(host, f"cat {' '.join(edited)}")
    test_exactly_the_expected_secret_files_with_their_owners_and_modes(stack)
    assert login(host, deployment)[0] == 200


def test_drift_of_a_secret_files_mode_is_put_back(stack):
    host, _, deployment = stack
    sh(host, "chmod 644 /etc/mas/secrets/matrix_secret")
    result = pyinfra("-v")
    assert result.returncode == 0, result.stdout[-3000:]
    assert any("MAS secret matrix_secret" in op for op in changed_operations(result.stdout))
    assert sh(host, "stat -c %a /etc/mas/secrets/matrix_secret").strip() == "400"
    assert not holding_secrets(result.stdout.splitlines(), fragments_of(deployment))
    assert changed_operations(pyinfra().stdout) == []
