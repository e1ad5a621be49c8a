"""MAS as the real MAS behaves (issue 11), without a lab: which secret files each host has, what MAS's
config says for the registration, email and upstream-provider settings, and what clients are sent at
auth_metadata."""

import json
from pathlib import Path

import fastjsonschema
import pytest
import yaml

from matrix_deploy.operator import secret_table
from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.inventory import Deployment, wanted_secrets
from matrix_deploy.services.mas import service as mas
from matrix_deploy.services.nginx import service as nginx
from matrix_deploy.services.synapse import service as synapse
from tests.conftest import SHARED, make_settings

PROVIDER_ID = "01JCN7R2CGXQJ2XKM3Z5E9Q1VB"
PROVIDER = {
    "id": PROVIDER_ID,
    "issuer": "https://idp.example.org/",
    "client_id": "matrix",
    "human_name": "Example IdP",
    "scope": "openid profile email",
    "claims": {"localpart": {"action": "require", "template": "{{ user.preferred_username }}"}},
    "synapse_idp_id": "oidc-example",
}
FEATURES = {
    "mas_password_registration": True,
    "mas_registration_token_required": True,
    "mas_email_smtp_host": "smtp.example.org",
    "mas_email_smtp_port": 587,
    "mas_email_smtp_mode": "starttls",
    "mas_email_smtp_username": "auth",
    "mas_email_from": '"Example" <auth@example.org>',
    "mas_upstream_providers": [PROVIDER],
}


def deployment_of(tmp_path, store: dict | None = None, **data) -> Deployment:
    settings = make_settings(secrets_dir=str(tmp_path / "secrets"), **data)
    path = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    if store:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_text(yaml.safe_dump(store))
        path.chmod(0o600)
    return Deployment(Path("test.py"), settings, secrets_store.load(path, wanted_secrets(settings)), path)


def names(paths) -> set[str]:
    return {p.rsplit("/", 1)[1] for p in paths}


@pytest.mark.parametrize(
    "data, mas_files, stale_mas",
    [
        # The bug: msc3861 without admin_user deleted synapse_client_secret every second run.
        (
            {"auth_mode": "msc3861", "synapse_version": "1.156.0"},
            {"synapse_client_secret"},
            {"admin_client_secret", "smtp_password", "synapse_password_pepper"},
        ),
        # Native with admin_user never removed a stale msc3861 client secret.
        (
            {"admin_user": "admin"},
            {"admin_client_secret"},
            {"synapse_client_secret", "smtp_password", "synapse_password_pepper"},
        ),
        ({}, set(), {"synapse_client_secret", "admin_client_secret", "smtp_password", "synapse_password_pepper"}),
    ],
    ids=["msc3861-without-admin", "native-with-admin", "native"],
)
def test_one_table_decides_which_secret_files_a_host_has(data, mas_files, stale_mas):
    s = make_settings(**data)
    base = {"matrix_secret", "database_password", "encryption_key", "signing_rsa.pem", "signing_ec.pem"}
    assert names(secret_table.files(s, "mas")) == base | mas_files
    assert names(secret_table.stale(s, "mas", [])) == stale_mas
    assert not set(secret_table.files(s, "mas")) & set(secret_table.stale(s, "mas", []))
    msc3861 = data.get("auth_mode") == "msc3861"
    assert ("mas_client_secret" in names(secret_table.files(s, "synapse"))) == msc3861
    assert ("mas_client_secret" in names(secret_table.stale(s, "synapse", []))) != msc3861


def test_admin_api_credentials_live_in_the_deploys_root_only_state_directory():
    with_admin, without = make_settings(admin_user="admin"), make_settings()
    admin_files = set(secret_table.files(with_admin, "mas-admin"))
    assert admin_files == {
        "/var/lib/matrix-deploy/mas-admin-api.curl",
        "/var/lib/matrix-deploy/mas-admin-password.json",
    }
    assert all(row.owner == "root" for row in secret_table.files(with_admin, "mas-admin").values())
    # The files of the old layout in /etc/mas/secrets (which the mas group can traverse) are removed.
    assert {"/etc/mas/secrets/admin_api.curl", "/etc/mas/secrets/admin_password.json"} <= set(
        secret_table.stale(with_admin, "mas-admin", [])
    )
    assert admin_files <= set(secret_table.stale(without, "mas-admin", []))
    assert mas.ADMIN_API_CREDENTIALS in admin_files and mas.ADMIN_PASSWORD_BODY in admin_files


def test_stale_upstream_provider_secrets_are_removed():
    s = make_settings(mas_upstream_providers=[PROVIDER])
    present = [f"/etc/mas/secrets/upstream_{PROVIDER_ID}_client_secret", "/etc/mas/secrets/upstream_0OLD_client_secret"]
    assert secret_table.stale(s, "mas", present)[-1] == "/etc/mas/secrets/upstream_0OLD_client_secret"
    assert present[0] in secret_table.files(s, "mas")


def test_registration_email_and_providers_render_into_a_schema_valid_mas_config(tmp_path):
    store = {
        "mas_smtp_password": "smtp-password-from-the-store",
        f"mas_upstream_client_secret_{PROVIDER_ID}": "idp-secret",
    }
    d = deployment_of(tmp_path, store, **FEATURES)
    text = mas.render_config(d)
    config = yaml.safe_load(text)
    fastjsonschema.compile(json.loads((SHARED / "mas/config.schema.json").read_text()))(yaml.safe_load(text))
    assert config["account"] == {"password_registration_enabled": True, "password_registration_token_required": True}
    assert config["email"] == {
        "from": '"Example" <auth@example.org>', "reply_to": '"Example" <auth@example.org>', "transport": "smtp",
        "mode": "starttls", "hostname": "smtp.example.org", "port": 587, "username": "auth",
        "password_file": "/etc/mas/secrets/smtp_password",
    }  # fmt: skip
    (provider,) = config["upstream_oauth2"]["providers"]
    assert provider["client_secret_file"] == f"/etc/mas/secrets/upstream_{PROVIDER_ID}_client_secret"
    assert provider["claims_imports"] == PROVIDER["claims"] and provider["scope"] == "openid profile email"
    assert provider["synapse_idp_id"] == "oidc-example"
    for secret in store.values():
        assert secret not in text
    files = mas.secret_files(d)
    assert files["/etc/mas/secrets/smtp_password"] == "smtp-password-from-the-store"
    assert files[f"/etc/mas/secrets/upstream_{PROVIDER_ID}_client_secret"] == "idp-secret"


def test_without_the_settings_mas_config_has_no_such_sections(deployment):
    config = yaml.safe_load(mas.render_config(deployment))
    assert not {"account", "email", "upstream_oauth2"} & set(config)


def test_auth_metadata_is_masss_public_document_through_nginx(deployment):
    site = nginx.render_site(deployment, "hs1")
    for path in ("/_matrix/client/v1/auth_metadata", "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"):
        block = site.split(f"location = {path} {{", 1)[1].split("}", 1)[0]
        assert block.strip() == "proxy_pass http://matrix_mas/.well-known/openid-configuration;"
        # Before the general rule that sends /_matrix to Synapse: exact matches win in nginx anyway.
        assert site.index(path) < site.index("proxy_pass http://matrix_synapse")


def test_msc3861_synapse_is_given_no_internal_address_to_publish(tmp_path):
    d = deployment_of(tmp_path, auth_mode="msc3861", synapse_version="1.156.0")
    msc3861 = yaml.safe_load(synapse.render_config(d))["experimental_features"]["msc3861"]
    assert msc3861["issuer_metadata"] == {
        "issuer": "https://auth.example.org/",
        "account_management_uri": "https://auth.example.org/account/",
    }
    assert msc3861["introspection_endpoint"] == "http://127.0.0.1:8080/oauth2/introspect"


def test_the_mas_gate_reads_every_file_mas_would_read_later(tmp_path):
    store = {"mas_smtp_password": "x" * 20, f"mas_upstream_client_secret_{PROVIDER_ID}": "y" * 20}
    d = deployment_of(tmp_path, store, admin_user="admin", **FEATURES)
    files = dict(mas.named_files(mas.config(d)))
    assert files == {
        "database.password_file": "/etc/mas/secrets/database_password",
        "secrets.encryption_file": "/etc/mas/secrets/encryption_key",
        "secrets.keys[0].key_file": "/etc/mas/secrets/signing_rsa.pem",
        "secrets.keys[1].key_file": "/etc/mas/secrets/signing_ec.pem",
        "matrix.secret_file": "/etc/mas/secrets/matrix_secret",
        "email.password_file": "/etc/mas/secrets/smtp_password",
        "upstream_oauth2.providers[0].client_secret_file": f"/etc/mas/secrets/upstream_{PROVIDER_ID}_client_secret",
        "clients[0].client_secret_file": "/etc/mas/secrets/admin_client_secret",
    }
    gate = mas.gate(mas.config(d), "/opt/mas/1.22.0")
    steps = gate.split(" && ")
    assert steps[1].endswith("./mas-cli config check --config /etc/mas/config.yaml")
    assert steps[2].endswith("./mas-cli templates check --config /etc/mas/config.yaml")
    assert steps[-1].endswith("./mas-cli config sync --dry-run --config /etc/mas/config.yaml")
    for path in files.values():
        assert f"runuser -u mas -- head -c0 -- {path} ||" in gate


def test_the_migration_prunes_only_when_no_provider_would_go():
    script = mas.prune_without_providers("mas-cli")
    dry, decide = script.index("config sync --prune --dry-run"), script.index("grep -q 'Deleting provider'")
    assert (
        dry
        < decide
        < script.index("mas-cli config sync --config")
        < script.index("mas-cli config sync --prune --config")
    )
