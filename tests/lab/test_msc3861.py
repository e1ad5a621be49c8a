"""Older homeservers: msc3861 delegation mode in a fresh lab host, then the migration to native mode.

Real Synapse 1.156.0 (the newest with experimental_features.msc3861) and 1.163.2, PostgreSQL and
nginx; MAS is the tests' stand-in, which introspects for Synapse's MAS client (client_secret_basic).
On the same host, before the migration: msc3861 without admin_user over three runs, a MAS config its
gate refuses (MAS keeps running), the registration, email and upstream provider settings, and a
provider removed from the settings, which the migration's prune must keep (issue 11).
"""

import html
import json
import os

import pytest
import yaml

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.delegation.options import MSC3861_CLIENT_ID
from matrix_deploy.services.mas.options import MAS_ADMIN_CLIENT_ID
from tests.support.lab import LAB_SETTINGS, ROOT, changed_operations, compat_login, fetch, pyinfra, service_stamps, ssh

pytestmark = pytest.mark.lab

MSC3861 = {"auth_mode": "msc3861", "synapse_version": "1.156.0"}
NATIVE = {"auth_mode": "native", "synapse_version": "1.163.2"}
# Debian 12, deployed as root: the single-host stack's other release and login (test_e2e: Debian 13, sudo).
RELEASE = os.environ.get("MATRIX_DEPLOY_LAB_RELEASE", "12")
PROVIDER_ID = "01JCN7R2CGXQJ2XKM3Z5E9Q1VB"
FEATURES = {
    "mas_password_registration": True,
    "mas_registration_token_required": True,
    "mas_email_smtp_host": "smtp.lab.test",
    "mas_email_smtp_port": 587,
    "mas_email_smtp_mode": "starttls",
    "mas_email_smtp_username": "auth",
    "mas_email_from": '"Lab" <auth@lab.test>',
    "mas_upstream_providers": [{
        "id": PROVIDER_ID, "issuer": "https://idp.lab.test/", "client_id": "matrix", "human_name": "Lab IdP",
        "scope": "openid profile", "claims": {"localpart": {"action": "require"}},
    }],
}  # fmt: skip
STORE = lab.LAB_DIR / "secrets/lab.yaml"


def login(host) -> dict:
    d = build(ROOT / "inventories/lab.py")
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": d.settings.admin_user},
            "password": d.secrets["admin_password"]}  # fmt: skip
    status, session = compat_login(host, body)
    assert status == 200, session
    return session


def mas_admin_ids(host, path: str) -> list[str]:
    """The IDs MAS's admin API lists at `path` (on the host's internal listener, as the deploy's admin client).

    Through MAS's API, not its tables: MAS keeps IDs as UUIDs in its own schema, the stand-in as text.
    """
    api = "http://127.0.0.1:8081"
    script = (
        "set -e; umask 077; f=$(mktemp); trap 'rm -f $f' EXIT; "
        "curl -fsS -K /var/lib/matrix-deploy/mas-admin-api.curl -d grant_type=client_credentials"
        f" -d scope=urn:mas:admin {api}/oauth2/token > $f; "
        "t=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"access_token\"])' $f); "
        "printf 'Authorization: Bearer %s\\n' \"$t\" > $f; "  # printf is a builtin: the token on no command line
        f"curl -fsSg -H @$f '{api}{path}'"  # -g: the brackets of filter[...] are no curl glob
    )
    result = ssh(host, script)
    assert result.returncode == 0, (path, result.stdout, result.stderr)
    page = json.loads(result.stdout)
    assert page["meta"]["count"] == len(page["data"]), page
    return sorted(item["id"] for item in page["data"])


def mas_clients(host) -> list[str]:
    return mas_admin_ids(host, "/api/admin/v1/oauth2-clients?filter[client-kind]=static&page[first]=100")


def mas_providers(host, enabled: bool | None = None) -> list[str]:
    query = "" if enabled is None else f"&filter[enabled]={str(enabled).lower()}"
    return mas_admin_ids(host, f"/api/admin/v1/upstream-oauth-providers?page[first]=100{query}")


def homeserver_yaml(host) -> dict:
    return yaml.safe_load(ssh(host, "cat /etc/synapse/homeserver.yaml").stdout)


@pytest.fixture(scope="module")
def host():
    lab.down()
    (lab_host,) = lab.up("single", release=RELEASE, login="root")
    LAB_SETTINGS.write_text(json.dumps(MSC3861))
    prepare_release()
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    yield lab_host
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


@pytest.fixture(scope="module")
def before_migration(host):
    session = login(host)
    token = session["access_token"]
    status, room = fetch(host, "POST", "/_matrix/client/v3/createRoom", {"name": "msc3861 era"}, token=token)
    assert status == 200, room
    assert fetch(host, "PUT", f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/m1",
                 {"msgtype": "m.text", "body": "from msc3861 days"}, token=token)[0] == 200  # fmt: skip
    secret = ssh(host, "sha256sum /etc/synapse/secrets/mas_secret").stdout
    return session, room["room_id"], secret


def test_msc3861_mode_logs_in_through_the_compat_layer(host, before_migration):
    session, _, _ = before_migration
    status, me = fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=session["access_token"])
    assert status == 200, me
    assert me["user_id"] == "@admin:lab.test" and me["device_id"] == session["device_id"]
    assert fetch(host, "GET", "/_matrix/client/v3/login")[1]["flows"][0] == {"type": "m.login.password"}
    assert fetch(host, "GET", "/_matrix/federation/v1/version")[1]["server"]["version"] == "1.156.0"
    config = homeserver_yaml(host)
    assert "matrix_authentication_service" not in config
    assert config["experimental_features"]["msc3861"]["client_id"] == "0000000000000000000SYNAPSE"
    assert mas_clients(host) == sorted([MSC3861_CLIENT_ID, MAS_ADMIN_CLIENT_ID])
    assert ssh(host, "cat /var/lib/matrix-deploy/auth-mode").stdout.strip() == "msc3861"


def public_metadata_is_complete(host) -> None:
    """auth_metadata through nginx is MAS's own discovery document, complete and with public addresses only."""
    status, discovery = fetch(host, "GET", "/.well-known/openid-configuration", vhost="auth.lab.test")
    assert status == 200, discovery
    for path in ("/_matrix/client/v1/auth_metadata", "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"):
        status, metadata = fetch(host, "GET", path)
        assert status == 200, (path, metadata)
        assert metadata == discovery, path
        for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "introspection_endpoint"):
            assert metadata[key].startswith("https://auth.lab.test/"), (path, key, metadata[key])
        text = json.dumps(metadata)
        assert "127.0.0.1" not in text and host.address not in text and ":8080" not in text, text


def test_auth_metadata_through_nginx_is_mass_public_document_in_msc3861_mode(host, before_migration):
    public_metadata_is_complete(host)


def test_msc3861_without_admin_user_keeps_its_client_secret_over_three_runs(host, before_migration):
    """The bug: the `else` removing synapse_client_secret hung off admin_user, so every second run deleted it."""
    LAB_SETTINGS.write_text(json.dumps({**MSC3861, "admin_user": None}))
    try:
        for run in range(3):
            result = pyinfra()
            assert result.returncode == 0, (run, result.stdout[-3000:])
            files = ssh(host, "ls /etc/mas/secrets /var/lib/matrix-deploy").stdout.split()
            assert "synapse_client_secret" in files, (run, files)
            assert "admin_client_secret" not in files and "mas-admin-api.curl" not in files, (run, files)
            assert ssh(host, "curl -fsS http://127.0.0.1:8081/health").returncode == 0
        assert changed_operations(result.stdout) == [], "the third run changes nothing"
        token = before_migration[0]["access_token"]
        assert fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=token)[0] == 200
    finally:
        LAB_SETTINGS.write_text(json.dumps(MSC3861))
    assert pyinfra().returncode == 0
    assert "mas-admin-api.curl" in ssh(host, "ls /var/lib/matrix-deploy").stdout.split()


def test_a_mas_config_real_mas_would_fail_on_is_refused_and_mas_keeps_running(host, before_migration):
    """`mas-cli config check` opens no file; MAS would stop at start on a file it cannot read. The gate catches it."""
    before, live = service_stamps(host), ssh(host, "cat /etc/mas/config.yaml").stdout
    pepper = {
        "passwords": {"schemes": [{"version": 1, "algorithm": "argon2id", "secret_file": "/etc/mas/secrets/pepper"}]}
    }
    LAB_SETTINGS.write_text(json.dumps({**MSC3861, "mas_extra_config": pepper}))
    try:
        result = pyinfra()
    finally:
        LAB_SETTINGS.write_text(json.dumps(MSC3861))
    assert result.returncode != 0
    assert (
        "MAS: the new /etc/mas/config.yaml was rejected by its checker; the running service keeps the old one"
        in result.stdout
    )
    # The checker's own messages: head's, and the setting it names.
    assert "cannot open '/etc/mas/secrets/pepper' for reading: No such file or directory" in result.stdout, (
        result.stdout[-3000:]
    )
    assert "passwords.schemes[0].secret_file: MAS (user mas) cannot read /etc/mas/secrets/pepper" in result.stdout
    assert ssh(host, "cat /etc/mas/config.yaml").stdout == live
    assert service_stamps(host) == before
    assert ssh(host, "curl -fsS http://127.0.0.1:8081/health").returncode == 0
    # A config MAS's own `config check` refuses: its message, and MAS untouched too.
    LAB_SETTINGS.write_text(
        json.dumps({**MSC3861, "mas_extra_config": {"http": {"trusted_proxies": ["proxy.lab.test"]}}})
    )
    try:
        result = pyinfra()
    finally:
        LAB_SETTINGS.write_text(json.dumps(MSC3861))
    assert result.returncode != 0
    # MAS 1.22.0's own words (figment's error for ipnetwork's), the stand-in's as well.
    assert 'invalid address: proxy.lab.test for key "default.http.trusted_proxies.0"' in result.stdout, result.stdout[
        -3000:
    ]
    assert ssh(host, "cat /etc/mas/config.yaml").stdout == live
    assert service_stamps(host) == before
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    # Back to the accepted settings: only the candidate (removed when refused) is staged again; no restart.
    assert changed_operations(again.stdout) == ["matrix-authentication-service | Stage /etc/mas/config.yaml"]
    assert service_stamps(host) == before


def add_to_store(**entries) -> None:
    values = yaml.safe_load(STORE.read_text())
    values.update(entries)
    STORE.write_text(yaml.safe_dump(values))  # the file keeps its mode 0600


def test_registration_email_and_a_provider_deploy_and_show_in_mas(host, before_migration):
    add_to_store(
        mas_smtp_password="lab-smtp-password-0123",
        **{f"mas_upstream_client_secret_{PROVIDER_ID}": "lab-idp-secret-0123"},
    )
    assert fetch(host, "GET", "/register/password", vhost="auth.lab.test")[0] == 303, (
        "off by default: to the login page"
    )
    LAB_SETTINGS.write_text(json.dumps({**MSC3861, **FEATURES}))
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    config = yaml.safe_load(ssh(host, "cat /etc/mas/config.yaml").stdout)
    assert config["account"] == {"password_registration_enabled": True, "password_registration_token_required": True}
    assert (
        config["email"]["password_file"] == "/etc/mas/secrets/smtp_password" and config["email"]["mode"] == "starttls"
    )
    (provider,) = config["upstream_oauth2"]["providers"]
    assert provider["client_secret_file"] == f"/etc/mas/secrets/upstream_{PROVIDER_ID}_client_secret"
    modes = ssh(
        host, f"stat -c '%U %a' /etc/mas/secrets/smtp_password /etc/mas/secrets/upstream_{PROVIDER_ID}_client_secret"
    ).stdout
    assert modes.split("\n")[:2] == ["mas 400", "mas 400"], modes
    assert "lab-smtp-password" not in json.dumps(config) and "lab-idp-secret" not in result.stdout
    # Behaviour: registration offered, the provider on the login page and in MAS's database.
    status, discovery = fetch(host, "GET", "/.well-known/openid-configuration", vhost="auth.lab.test")
    assert "create" in discovery["prompt_values_supported"]
    assert fetch(host, "GET", "/register/password", vhost="auth.lab.test")[0] == 200
    login_page = html.unescape(fetch(host, "GET", "/login", vhost="auth.lab.test")[1])  # MAS escapes "/" too
    assert f'href="/upstream/authorize/{PROVIDER_ID}"' in login_page and "Continue with Lab IdP" in login_page
    assert mas_providers(host, enabled=True) == [PROVIDER_ID]

    # Removed from the settings: MAS disables it (its users' links kept), registration off again.
    LAB_SETTINGS.write_text(json.dumps(MSC3861))
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"/upstream/authorize/{PROVIDER_ID}" not in html.unescape(
        fetch(host, "GET", "/login", vhost="auth.lab.test")[1]
    )
    assert fetch(host, "GET", "/register/password", vhost="auth.lab.test")[0] == 303
    assert mas_providers(host, enabled=False) == [PROVIDER_ID]
    assert f"upstream_{PROVIDER_ID}_client_secret" not in ssh(host, "ls /etc/mas/secrets").stdout


def test_migration_to_native_keeps_users_devices_rooms_and_the_secret(host, before_migration):
    session, room, secret = before_migration
    before = service_stamps(host)
    LAB_SETTINGS.write_text(json.dumps(NATIVE))
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    config = homeserver_yaml(host)
    assert "experimental_features" not in config
    assert config["matrix_authentication_service"]["secret_path"] == "/etc/synapse/secrets/mas_secret"
    assert ssh(host, "sha256sum /etc/synapse/secrets/mas_secret").stdout == secret, "the old admin_token is the secret"
    # The provider removed earlier is kept with its links: `--prune` would have deleted it, so the migration
    # synced without it and left MAS's client for Synapse for the operator to prune.
    assert mas_providers(host) == [PROVIDER_ID]
    assert mas_clients(host) == sorted([MSC3861_CLIENT_ID, MAS_ADMIN_CLIENT_ID])
    assert not ssh(host, "ls /etc/mas/secrets/synapse_client_secret /etc/synapse/secrets/mas_client_secret").stdout, (
        "native mode: the msc3861 client secret files are gone on both sides"
    )
    public_metadata_is_complete(host)
    assert fetch(host, "GET", "/_matrix/federation/v1/version")[1]["server"]["version"] == "1.163.2"
    after = service_stamps(host)
    assert int(before["mas"]) < int(after["mas"]) < int(after["synapse"]), "MAS restarted before Synapse"
    # The session from before the migration still works, on the same device; the room and its message are there.
    token = session["access_token"]
    status, me = fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=token)
    assert status == 200 and me["device_id"] == session["device_id"], me
    assert session["device_id"] in [
        d["device_id"] for d in fetch(host, "GET", "/_matrix/client/v3/devices", token=token)[1]["devices"]
    ]
    assert room in fetch(host, "GET", "/_matrix/client/v3/joined_rooms", token=token)[1]["joined_rooms"]
    messages = fetch(host, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20", token=token)[1]
    assert "from msc3861 days" in [e["content"].get("body") for e in messages["chunk"]]
    assert ssh(host, "cat /var/lib/matrix-deploy/auth-mode").stdout.strip() == "native"
    assert changed_operations(pyinfra().stdout) == [], "the migrated deployment is stable"


def test_stale_msc3861_settings_cannot_move_a_migrated_host_back(host, before_migration):
    before = service_stamps(host)
    config = ssh(host, "cat /etc/synapse/homeserver.yaml").stdout
    # MAS's config, every secret file (names, owners, modes, contents) and the recorded modes stay as they are.
    mas_side = "cat /etc/mas/config.yaml /var/lib/matrix-deploy/auth-mode; cd /etc && stat -c '%n %U %a' mas/secrets/* synapse/secrets/* && sha256sum mas/secrets/* synapse/secrets/*"
    unchanged = ssh(host, mas_side).stdout
    LAB_SETTINGS.write_text(json.dumps(MSC3861))
    result = pyinfra()
    assert result.returncode != 0
    assert "was migrated to auth_mode 'native'" in result.stdout and "allow_auth_mode_downgrade" in result.stdout
    assert ssh(host, "cat /etc/synapse/homeserver.yaml").stdout == config
    assert ssh(host, mas_side).stdout == unchanged and "native" in unchanged
    assert service_stamps(host) == before
    LAB_SETTINGS.write_text(json.dumps(NATIVE))
