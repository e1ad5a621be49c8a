"""The MAS stand-in's `syn2mas` against a real Synapse database on a lab host (Debian 13, PostgreSQL 17, Synapse
from PyPI): the checks and their exit statuses, the lock, a migrate that fails half-way and its rerun, the rows,
and afterwards what a client sees through Synapse delegating to the stand-in: its kept Synapse access tokens still
work, a locked user's do not, and a Synapse password logs in through the compat API and is upgraded to the newest
scheme. About two minutes with the lab image cached.
"""

import base64
import io
import json
import secrets
import tarfile

import pytest
import yaml

from matrix_deploy import lab
from tests.support.lab import sh, ssh
from tests.support.mas_standin.build import build

pytestmark = pytest.mark.lab

SYNAPSE_CONFIG = "/etc/synapse/homeserver.yaml"
PEPPER = "p3pper"
SETUP = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q python3-venv curl >/dev/null
python3 -m venv /opt/synapse
/opt/synapse/bin/pip install -q matrix-synapse psycopg2-binary > /tmp/pip.log 2>&1 &  # beside the PostgreSQL install
apt-get install -y -q postgresql >/dev/null
wait $! || { cat /tmp/pip.log; exit 1; }
systemctl start postgresql
su postgres -c "psql -q" <<'SQL'
CREATE ROLE synapse LOGIN PASSWORD 'synpass';
CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0;
CREATE ROLE mas LOGIN PASSWORD 'maspass';
CREATE DATABASE mas OWNER mas;
SQL
mkdir -p /etc/synapse /var/lib/synapse
cat > /etc/synapse/log.yaml <<'Y'
version: 1
formatters: {precise: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}}
handlers: {file: {class: logging.FileHandler, filename: /var/lib/synapse/homeserver.log, formatter: precise}}
root: {level: INFO, handlers: [file]}
disable_existing_loggers: false
Y
"""
START_SYNAPSE = """
cd /etc/synapse && /opt/synapse/bin/python -m synapse.app.homeserver -c homeserver.yaml --generate-keys >/dev/null
/opt/synapse/bin/python -m synapse.app.homeserver -c homeserver.yaml --daemonize
for i in $(seq 60); do curl -fsS http://127.0.0.1:8008/_matrix/client/versions >/dev/null 2>&1 && exit 0; sleep 1; done
exit 1
"""
# Users, devices, tokens and 3PIDs made through Synapse's own APIs (a guest directly in its table); the tokens the
# clients keep are written to /root/tokens.json on the host.
POPULATE = r"""
import hashlib, hmac, json, subprocess, urllib.request
BASE = "http://127.0.0.1:8008"
def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(BASE + path, method=method, data=data, headers=headers)) as r:
        return json.load(r)
def register(user, password, admin=False):
    nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
    mac = hmac.new(b"regsecret", digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]))
    return call("POST", "/_synapse/admin/v1/register", {"nonce": nonce, "username": user, "password": password,
                "admin": admin, "mac": mac.hexdigest()})
def login(user, password, device, refresh=False, name=None):
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password,
            "device_id": device, "refresh_token": refresh}
    if name:
        body["initial_device_display_name"] = name
    return call("POST", "/_matrix/client/v3/login", body)
root = register("root", "rootpass", admin=True)["access_token"]
register("alice", "\uff43orrect horse")  # a fullwidth c, which Synapse normalises (NFKC) before hashing
register("bob", "bobpass")
register("carol", "carolpass")
register("dave", "davepass")
call("PUT", "/_synapse/admin/v2/users/@alice:example.org", {
    "threepids": [{"medium": "email", "address": "alice@example.org"}, {"medium": "msisdn", "address": "447700900000"}],
    "external_ids": [{"auth_provider": "oidc-corp", "external_id": "alice-sub"}]}, root)
refreshable = login("alice", "correct horse", "ALICEDEV2", refresh=True)
tokens = {"alice1": login("alice", "correct horse", "ALICEDEV1", name="Alice phone")["access_token"],
          "alice2": refreshable["access_token"], "alice2_refresh": refreshable["refresh_token"],
          "bob": login("bob", "bobpass", "BOBDEV")["access_token"],
          "dave": login("dave", "davepass", "DAVEDEV")["access_token"]}
login("carol", "carolpass", "CAROLDEV")
call("POST", "/_synapse/admin/v1/deactivate/@carol:example.org", {"erase": False}, root)
call("PUT", "/_synapse/admin/v2/users/@dave:example.org", {"locked": True}, root)
subprocess.run(["su", "postgres", "-c", "psql -q synapse -c \"INSERT INTO users (name, creation_ts, is_guest, admin,"
                " deactivated, locked, approved) VALUES ('@1234:example.org', 0, 1, 0, 0, false, true)\""], check=True)
json.dump(tokens, open("/root/tokens.json", "w"))
"""
CLIENT = r"""
import base64, json, subprocess, sys, urllib.error, urllib.request
tokens = json.load(open("/root/tokens.json"))
def call(url, body=None, token=None, form=None, basic=None):
    headers, data = {}, None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data, headers["Content-Type"] = form.encode(), "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers)) as r:
            return [r.status, json.load(r)]
    except urllib.error.HTTPError as e:
        return [e.code, json.load(e)]
def q(sql):
    return subprocess.run(["su", "postgres", "-c", f"psql -qAt mas -c \"{sql}\""], capture_output=True, text=True,
                          check=True).stdout.strip()
SYN, MAS = "http://127.0.0.1:8008", "http://127.0.0.1:8080"
whoami = lambda token: call(SYN + "/_matrix/client/v3/account/whoami", token=token)
login = lambda user, password: call(MAS + "/_matrix/client/v3/login", {"type": "m.login.password",
                                    "identifier": {"type": "m.id.user", "user": user}, "password": password})
out = {name: whoami(tokens[name]) for name in ("alice1", "alice2", "bob", "dave")}
introspect = lambda token: call(MAS + "/oauth2/introspect", form="token=" + token,
                               basic="0000000000000000000SYNAPSE:introspectsecret")
out["introspect"] = introspect(tokens["alice1"])
# Synapse's refresh token, refreshed through the compat API: a new pair, the old access token expired (asked of
# the stand-in: Synapse caches introspection answers), the old refresh token consumed.
status, body = call(MAS + "/_matrix/client/v3/refresh", {"refresh_token": tokens["alice2_refresh"]})
out["refresh"] = [status, sorted(body), body.get("access_token", "")[:4], body.get("refresh_token", "")[:4]]
out["refreshed_whoami"] = whoami(body.get("access_token"))
out["old_after_refresh"] = introspect(tokens["alice2"])[1]["active"]
out["refresh_again"] = call(MAS + "/_matrix/client/v3/refresh", {"refresh_token": tokens["alice2_refresh"]})
out["password_before"] = q("SELECT password_version, left(hashed_password, 4) FROM users WHERE username = 'alice'")
out["wrong"] = login("alice", "wrong")
status, body = login("alice", "\uff43orrect horse")
out["login"] = [status, body.get("user_id")]
out["password_after"] = q("SELECT password_version, left(hashed_password, 8) FROM users WHERE username = 'alice'")
out["new_token"] = whoami(body.get("access_token"))
out["locked_login"] = login("dave", "davepass")
json.dump(out, sys.stdout)
"""


def _mas_files(tmp_path) -> bytes:
    """The stand-in release and a MAS config for syn2mas, as a tarball for /etc/mas."""
    tarball, _ = build(tmp_path, "1.22.0")
    d = "/etc/mas"
    config = {
        "http": {"public_base": "http://127.0.0.1:8080/", "issuer": "http://127.0.0.1:8080/",
                 "listeners": [{"name": "web", "binds": [{"host": "127.0.0.1", "port": 8080}],
                                "resources": [{"name": r} for r in ("discovery", "human", "oauth", "compat")]}]},
        "database": {"host": "127.0.0.1", "port": 5432, "username": "mas", "password": "maspass", "database": "mas"},
        "secrets": {"encryption_file": f"{d}/encryption", "keys": [{"kid": "rsa", "key_file": f"{d}/signing.pem"}]},
        "matrix": {"kind": "synapse", "homeserver": "example.org", "endpoint": "http://127.0.0.1:8008/",
                   "secret_file": f"{d}/matrix_secret"},
        "passwords": {"enabled": True, "schemes": [
            {"version": 1, "algorithm": "bcrypt", "secret_file": f"{d}/pepper", "unicode_normalization": True},
            {"version": 2, "algorithm": "argon2id"}]},
        "clients": [{"client_id": "0000000000000000000SYNAPSE", "client_auth_method": "client_secret_basic",
                     "client_secret_file": f"{d}/client_secret"}],
        "upstream_oauth2": {"providers": [{
            "id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "synapse_idp_id": "oidc-corp", "issuer": "https://idp.example.org/",
            "client_id": "matrix", "token_endpoint_auth_method": "client_secret_basic",
            "client_secret_file": f"{d}/idp_secret"}]},
    }  # fmt: skip
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = {
        "mas.yaml": yaml.safe_dump(config).encode(), "signing.pem": key, "encryption": secrets.token_hex(32).encode(),
        "pepper": PEPPER.encode(), "matrix_secret": b"masmatrixsecret", "client_secret": b"introspectsecret",
        "idp_secret": b"idpsecret",
        "oidc.yaml": yaml.safe_dump({"oidc_providers": [{"idp_id": "corp", "issuer": "https://idp.example.org/",
                                                          "client_id": "matrix", "client_secret": "idpsecret"}]}).encode(),
    }  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as bundle, tarfile.open(tarball) as release:
        for member in release.getmembers():
            bundle.addfile(member, release.extractfile(member) if member.isfile() else None)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            bundle.addfile(info, io.BytesIO(data))
    return out.getvalue()


SESSIONS = ("SELECT u.username || ' ' || s.device_id || ' ' || COALESCE(s.human_name, '-') || ' '"
            " || s.is_synapse_admin || ' ' || (SELECT count(*) FROM compat_refresh_tokens r"
            " WHERE r.compat_session_id = s.compat_session_id) FROM compat_sessions s JOIN users u"
            " USING (user_id) WHERE s.device_id LIKE '%DEV%' ORDER BY 1")  # fmt: skip


def synapse_config(mas: bool) -> str:
    config = {
        "server_name": "example.org", "pid_file": "/var/lib/synapse/homeserver.pid", "report_stats": False,
        "listeners": [{"port": 8008, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "resources": [{"names": ["client"], "compress": False}]}],
        "database": {"name": "psycopg2", "args": {"user": "synapse", "password": "synpass", "dbname": "synapse",
                                                  "host": "127.0.0.1", "cp_min": 1, "cp_max": 5}},
        "log_config": "/etc/synapse/log.yaml", "media_store_path": "/var/lib/synapse/media",
        "signing_key_path": "/etc/synapse/signing.key", "trusted_key_servers": [],
        "registration_shared_secret": "regsecret", "password_config": {"pepper": PEPPER},
    }  # fmt: skip
    if mas:  # the adoption: Synapse delegates to MAS, its own password login off
        config["password_config"]["enabled"] = False
        config["matrix_authentication_service"] = {"enabled": True, "endpoint": "http://127.0.0.1:8080/",
                                                   "secret": "masmatrixsecret"}  # fmt: skip
    return yaml.safe_dump(config)


def syn2mas(host, *args: str) -> tuple[int, str]:
    result = ssh(host, f"cd /etc/mas && ./mas-cli syn2mas -c mas.yaml {' '.join(args)} 2>&1")
    return result.returncode, result.stdout


def q(host, sql: str) -> str:
    return sh(host, f'su postgres -c "psql -qAt mas -c \\"{sql}\\""').strip()


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    """A Synapse with data, checked and migrated by the stand-in's syn2mas, then delegating to the stand-in."""
    lab.down()
    (host,) = lab.up("single", login="root")
    seen = {}
    try:
        sh(host, "bash -s", input=SETUP, timeout=600)
        sh(host, f"cat > {SYNAPSE_CONFIG}", input=synapse_config(mas=False))
        sh(host, "bash -s", input=START_SYNAPSE)
        sh(host, "/usr/bin/python3 -", input=POPULATE)
        bundle = base64.b64encode(_mas_files(tmp_path_factory.mktemp("mas"))).decode()
        sh(host, "mkdir -p /etc/mas && base64 -d | tar -xz -C /etc/mas", input=bundle)
        both = f"--synapse-config {SYNAPSE_CONFIG} --synapse-config oidc.yaml"
        seen["check_without_provider"] = syn2mas(host, f"--synapse-config {SYNAPSE_CONFIG} check")
        seen["check"] = syn2mas(host, "check", both)  # the options may follow the subcommand
        holder = "psql -qAt mas -c 'SELECT pg_advisory_lock(6584285998412104315); SELECT pg_sleep(8)'"
        sh(host, f'nohup su postgres -c "{holder}" >/dev/null 2>&1 & sleep 2')
        seen["locked"] = syn2mas(host, both, "check")
        sh(host, "sleep 7")
        seen["dry_run"] = syn2mas(host, both, "migrate", "--dry-run")
        seen["after_dry_run"] = q(host, "SELECT count(*) FROM users")
        sh(host, "kill $(cat /var/lib/synapse/homeserver.pid); sleep 3")  # Synapse offline for the migration
        ghost = ("INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)"
                 " VALUES ('@ghost:example.org', 'email', 'ghost@example.org', 0, 0)")  # fmt: skip
        sh(host, f'su postgres -c "psql -q synapse -c \\"{ghost}\\""')
        seen["half"] = syn2mas(host, both, "migrate")
        seen["half_tables"] = q(host, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
                                      " WHERE tablename LIKE 'syn2mas%'")  # fmt: skip
        seen["check_half"] = syn2mas(host, both, "check")
        sh(host, 'su postgres -c "psql -q synapse -c \\"DELETE FROM user_threepids WHERE user_id LIKE \'@ghost%\'\\""')
        seen["migrate"] = syn2mas(host, both, "migrate")
        seen["check_after"] = syn2mas(host, both, "check")
        seen["sessions"] = q(host, SESSIONS)
        seen["users"] = q(host, "SELECT username, can_request_admin, locked_at IS NOT NULL, deactivated_at IS NOT NULL,"
                                " is_guest, password_version, left(hashed_password, 4) FROM users ORDER BY username")  # fmt: skip
        sh(host, f"cat > {SYNAPSE_CONFIG}", input=synapse_config(mas=True))
        sh(host, "cd /etc/mas && (nohup ./mas-cli server -c mas.yaml > /var/log/mas.log 2>&1 & echo $! > /run/mas.pid)")
        discovery = "http://127.0.0.1:8080/.well-known/openid-configuration"
        sh(host, f"for i in $(seq 30); do curl -fsS {discovery} >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1")
        sh(host, "bash -s", input=START_SYNAPSE)
        seen["client"] = json.loads(sh(host, "/usr/bin/python3 -", input=CLIENT))
        yield host, seen
    finally:
        # The servers this test started, by their PIDs, so the host powers off at once.
        ssh(
            host,
            "kill $(cat /run/mas.pid /var/lib/synapse/homeserver.pid 2>/dev/null) 2>/dev/null; sleep 2;"
            " systemctl stop postgresql",
        )
        lab.down()


def test_check_reports_in_mas_words_with_its_exit_statuses(adopted):
    _, seen = adopted
    status, out = seen["check_without_provider"]
    assert status == 10, out
    assert "===== Errors =====" in out and (
        "Synapse database contains 1 users associated to the OpenID Connect or OAuth2 provider 'oidc-corp' but the "
        "Synapse configuration does not contain this provider." in out
    )
    status, out = seen["check"]
    assert status == 11 and "===== Errors =====" not in out, out
    assert "Synapse database contains 1 guests which will be migrated are not supported by MAS." in out
    assert "Synapse database contains 1 non-email 3PIDs (probably phone numbers)" in out
    status, out = seen["locked"]
    assert status == 1 and "Failed to acquire syn2mas lock on the database." in out, out
    status, out = seen["check_after"]
    assert status == 1 and "The MAS database is not empty: rows found in at least `users`." in out, out


def test_a_dry_run_leaves_the_mas_database_empty(adopted):
    _, seen = adopted
    status, out = seen["dry_run"]
    assert status == 0 and "Migration ran in dry-run mode, deleting all imported data" in out, out
    assert seen["after_dry_run"] == "0"


def test_a_migrate_that_failed_half_way_is_reset_by_the_next(adopted):
    _, seen = adopted
    status, out = seen["half"]
    assert status == 1 and "user @ghost:example.org was not found for migration" in out, out
    assert seen["half_tables"].split(",") == sorted(
        [f"syn2mas__{t}" for t in ("users", "user_emails", "user_unsupported_third_party_ids", "upstream_oauth_links",
                                   "compat_sessions", "compat_access_tokens", "compat_refresh_tokens")]
        + ["syn2mas_restore_constraints", "syn2mas_restore_indices"]
    )  # fmt: skip
    assert seen["check_half"][0] == 11, seen["check_half"][1]  # a syn2mas in progress: no emptiness check
    status, out = seen["migrate"]
    assert status == 0 and "Partial syn2mas migration has already been done; resetting." in out, out


def test_the_migrated_rows(adopted):
    host, seen = adopted
    assert seen["users"].splitlines() == ["1234|f|f|f|t||", "alice|f|f|f|f|1|$2b$", "bob|f|f|f|f|1|$2b$", "carol|f|f|t|f||",
                                          "dave|f|t|f|f|1|$2b$", "root|t|f|f|f|1|$2b$"]  # fmt: skip
    assert q(host, "SELECT email FROM user_emails") == "alice@example.org"
    assert q(host, "SELECT medium, address FROM user_unsupported_third_party_ids") == "msisdn|447700900000"
    assert q(host, "SELECT upstream_oauth_provider_id, subject FROM upstream_oauth_links") == (
        "01JCN7R2CGXQJ2XKM3Z5E9Q1VB|alice-sub"
    )
    assert seen["sessions"].splitlines() == ["alice ALICEDEV1 Alice phone false 0", "alice ALICEDEV2 - false 1",
                                             "bob BOBDEV - false 0", "dave DAVEDEV - false 0"]  # fmt: skip
    assert (
        q(host, "SELECT count(*) FROM compat_sessions s JOIN users u USING (user_id) WHERE u.username = 'carol'") == "0"
    )


def test_kept_synapse_tokens_work_through_synapse_and_the_stand_in(adopted):
    client = adopted[1]["client"]
    assert client["alice1"] == [200, {"user_id": "@alice:example.org", "is_guest": False, "device_id": "ALICEDEV1"}]
    assert client["alice2"][1]["device_id"] == "ALICEDEV2"
    assert client["bob"][0] == 200
    assert client["dave"][0] == 401 and client["dave"][1]["errcode"] == "M_UNKNOWN_TOKEN"  # locked
    status, body = client["introspect"]
    assert status == 200 and body["active"] and body["client_id"] == "legacy" and body["device_id"] == "ALICEDEV1"


def test_a_synapse_password_logs_in_and_is_upgraded(adopted):
    client = adopted[1]["client"]
    assert client["password_before"] == "1|$2b$"
    assert client["wrong"][0] == 403
    assert client["login"] == [200, "@alice:example.org"]
    assert client["password_after"] == "2|$scrypt$"
    assert client["new_token"][0] == 200
    assert client["locked_login"][1]["errcode"] == "M_USER_LOCKED"


def test_a_synapse_refresh_token_refreshes_once(adopted):
    client = adopted[1]["client"]
    assert client["refresh"] == [200, ["access_token", "expires_in_ms", "refresh_token"], "mct_", "mcr_"]
    assert client["refreshed_whoami"][1]["device_id"] == "ALICEDEV2"
    assert client["old_after_refresh"] is False
    assert client["refresh_again"] == [401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid refresh token"}]
