"""Older homeservers: msc3861 delegation mode in a fresh lab host, then the migration to native mode.

Real Synapse 1.156.0 (the newest with experimental_features.msc3861) and 1.163.2, PostgreSQL and
nginx; MAS is the tests' stand-in, which introspects for Synapse's MAS client (client_secret_basic).
"""

import json

import pytest
import yaml

from matrix_deploy import lab
from matrix_deploy.inventory import build
from matrix_deploy.settings import MAS_ADMIN_CLIENT_ID, MSC3861_CLIENT_ID
from tests.lab_release import prepare as prepare_release
from tests.lab_support import LAB_SETTINGS, ROOT, changed_operations, fetch, pyinfra, service_stamps, ssh

pytestmark = pytest.mark.lab

MSC3861 = {"auth_mode": "msc3861", "synapse_version": "1.156.0"}
NATIVE = {"auth_mode": "native", "synapse_version": "1.163.2"}


def login(host) -> dict:
    d = build(ROOT / "inventories/lab.py")
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": d.settings.admin_user},
            "password": d.secrets["admin_password"]}  # fmt: skip
    status, session = fetch(host, "POST", "/_matrix/client/v3/login", body)
    assert status == 200, session
    return session


def mas_clients(host) -> list[str]:
    return sorted(
        ssh(
            host, "cd / && runuser -u postgres -- psql -d mas -Atc 'SELECT client_id FROM oauth2_clients'"
        ).stdout.split()
    )


def homeserver_yaml(host) -> dict:
    return yaml.safe_load(ssh(host, "cat /etc/synapse/homeserver.yaml").stdout)


@pytest.fixture(scope="module")
def host():
    lab.down()
    (lab_host,) = lab.up("single")
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
    assert mas_clients(host) == [MAS_ADMIN_CLIENT_ID], (
        "the homeserver's client was pruned from MAS, the admin API client kept"
    )
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
    LAB_SETTINGS.write_text(json.dumps(MSC3861))
    result = pyinfra()
    assert result.returncode != 0
    assert "was migrated to auth_mode 'native'" in result.stdout and "allow_auth_mode_downgrade" in result.stdout
    assert ssh(host, "cat /etc/synapse/homeserver.yaml").stdout == config
    assert service_stamps(host) == before
    LAB_SETTINGS.write_text(json.dumps(NATIVE))
