"""Bad input stops `pyinfra inventory deploy.py` with a clear message before any host is contacted.

The inventory's only host is a local TCP listener that counts connections: a good inventory makes
pyinfra connect to it (the control), a bad one must not.
"""

import json
import os
import socket
import subprocess
import threading

import pytest

from tests.lab_support import ROOT

GOOD = {"matrix_server_name": "example.org", "mas_release_sha256": "a" * 64}


class ConnectionCounter:
    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.count += 1
            conn.close()


def run(settings: dict, tmp_path) -> tuple[subprocess.CompletedProcess, int]:
    counter = ConnectionCounter()
    env = {
        **os.environ,
        "MATRIX_DEPLOY_PROBE_PORT": str(counter.port),
        "MATRIX_DEPLOY_PROBE_SETTINGS": json.dumps({"secrets_dir": str(tmp_path / "secrets"), **settings}),
    }
    result = subprocess.run(
        [str(ROOT / ".venv/bin/pyinfra"), "-y", "tests/inventories/probe.py", "deploy.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    counter.server.close()
    return result, counter.count


def test_control_good_settings_do_reach_the_host(tmp_path):
    result, connections = run(GOOD, tmp_path)
    assert connections >= 1, result.stderr
    assert result.returncode != 0  # the counter is no SSH server


BAD = [
    ({"matrix_server_name": None}, "matrix_server_name is not set"),
    ({"matrix_server_name": "Example Org"}, "matrix_server_name = 'Example Org'"),
    ({"matrix_public_url": "matrix.example.org"}, "matrix_public_url = 'matrix.example.org': expected an https URL"),
    ({"mas_public_url": "https://matrix.example.org"}, "expected a host name of its own"),
    ({"synapse_port": 99999}, "synapse_port = 99999: expected a TCP port number between 1 and 65535"),
    ({"mas_port": 8008}, "mas_port = 8008: already used by synapse_port"),
    ({"synapse_version": "1.120.0"}, "synapse_version = '1.120.0': expected 1.136.0 or newer"),
    ({"mas_version": "v1"}, "mas_version = 'v1': expected a release version"),
    ({"mas_release_sha256": "xyz"}, "mas_release_sha256 = 'xyz'"),
    (
        {"tls_certificate": "/no/such.crt", "tls_certificate_key": "/no/such.key"},
        "tls_certificate = '/no/such.crt': expected an existing file",
    ),
    ({"admin_user": "root user"}, "admin_user = 'root user'"),
    (
        {"synapse_extra_config": {"password_config": {"enabled": True}}},
        "synapse_extra_config.password_config: not allowed",
    ),
    ({"synapse_extra_config": {"oidc_providers": []}}, "synapse_extra_config.oidc_providers: not allowed"),
    ({"mas_extra_config": {"secrets": {}}}, "mas_extra_config.secrets: not allowed"),
    ({"auth_mode": "oauth"}, "auth_mode = 'oauth'"),
    ({"synapse_verison": "1.163.2"}, "did you mean synapse_version?"),
    # MAS settings (issue 11): the rules MAS 1.22.0 applies when it loads its config, checked here first.
    (
        {"auth_mode": "msc3861", "synapse_version": "1.124.0"},
        "synapse_version = '1.124.0': expected 1.125.0 or newer with auth_mode 'msc3861'",
    ),
    ({"admin_user": "_admin"}, "admin_user = '_admin': expected a user name MAS accepts"),
    ({"admin_user": "ops/admin"}, "admin_user = 'ops/admin': expected a user name MAS accepts"),
    ({"mas_password_registration": "yes"}, "mas_password_registration = 'yes': expected true or false"),
    ({"mas_password_registration": True}, "mas_password_registration = True: expected email settings too"),
    ({"mas_email_smtp_from": "a@b.org"}, "mas_email_smtp_from: unknown setting; did you mean mas_email_from?"),
    ({"mas_email_from": "auth@example.org"}, "mas_email_from = 'auth@example.org': expected mas_email_smtp_host"),
    (
        {"mas_email_smtp_host": "smtp.example.org", "mas_email_from": "auth@example.org", "mas_email_smtp_mode": "ssl"},
        "mas_email_smtp_mode = 'ssl': expected one of plain, starttls, tls",
    ),
    ({"mas_email_smtp_host": "smtp.example.org"}, "mas_email_from is not set: expected the sender address"),
    (
        {"mas_email_smtp_host": "smtp.example.org", "mas_email_from": "Auth Service"},
        "mas_email_from = 'Auth Service': expected an email address",
    ),
    (
        {"mas_email_smtp_host": "smtp.example.org", "mas_email_from": "a@example.org", "mas_email_smtp_port": 0},
        "mas_email_smtp_port = 0: expected a TCP port number",
    ),
    ({"mas_upstream_providers": [{"id": "google", "issuer": "https://accounts.google.com", "client_id": "c"}]},
     "mas_upstream_providers[0].id = 'google': expected a ULID"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "client_id": "c"}]},
     "mas_upstream_providers[0].issuer = None: expected the provider's https issuer URL"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "scope": "profile email"}]},
     "mas_upstream_providers[0].scope = 'profile email': expected scopes separated by single spaces, including openid"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "token_endpoint_auth_method": "private_key_jwt"}]},
     "token_endpoint_auth_method = 'private_key_jwt': expected one of client_secret_basic, client_secret_post, none"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "claims": {"skip_confirmation": True}}]},
     "mas_upstream_providers[0].claims.localpart.action: must be `require` when skip_confirmation is true"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "claims": {"localpart": {"on_conflict": "add"}}}]},
     "claims.localpart.action: must be `force` or `require` when on_conflict is `add`"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "claims": {"email": {"action": "always"}}}]},
     "claims.email.action = 'always': expected one of ignore, suggest, force, require"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "client_secret": "inline"}]},
     "mas_upstream_providers[0].client_secret: unknown"),
    ({"mas_extra_config": {"email": {"transport": "blackhole"}}}, "mas_extra_config.email: not allowed"),
    ({"mas_extra_config": {"upstream_oauth2": {"providers": []}}}, "mas_extra_config.upstream_oauth2: not allowed"),
    ({"mas_extra_config": {"account": {"password_registration_enabled": True}}},
     "mas_extra_config.account.password_registration_enabled: not allowed"),
]  # fmt: skip


@pytest.mark.parametrize("settings, expected", BAD, ids=[m.split(":")[0].split(" ")[0] for _, m in BAD])
def test_bad_setting_stops_before_any_connection(settings, expected, tmp_path):
    result, connections = run({**GOOD, **settings}, tmp_path)
    assert result.returncode == 2
    assert "no host was contacted" in result.stderr
    assert expected in result.stderr, result.stderr
    assert connections == 0


@pytest.mark.parametrize(
    "store, mode, expected",
    [
        ("matrix_shared_secret: tooshort\n", 0o600, "matrix_shared_secret is 8 characters long; expected at least 32"),
        ("matrix_shared_secret: " + "x" * 40 + "\n", 0o644, "has mode 0644: expected 0600"),
        ("{unclosed: [\n", 0o600, "is not valid YAML"),
        ("some_token: " + "x" * 40 + "\n", 0o600, "unknown secret 'some_token'"),
        # MAS loads its signing keys only when its server starts, and reads encryption_file byte for byte.
        ("mas_signing_key_rsa: not a key\n", 0o600, "mas_signing_key_rsa: not an unencrypted PEM private key"),
        ("mas_signing_key_ec: |\n  -----BEGIN PRIVATE KEY-----\n  MIIB\n  -----END PRIVATE KEY-----\n", 0o600,
         "mas_signing_key_ec: not an unencrypted PEM private key"),
        ("mas_encryption_key: " + "g" * 64 + "\n", 0o600, "mas_encryption_key: expected 64 hex digits"),
    ],
    ids=["short-secret", "store-mode", "store-damaged", "store-unknown-entry", "store-bad-rsa-key",
         "store-bad-ec-key", "store-bad-encryption-key"],
)  # fmt: skip
def test_bad_secrets_store_stops_before_any_connection(store, mode, expected, tmp_path):
    path = tmp_path / "secrets" / "probe.yaml"
    path.parent.mkdir(mode=0o700)
    path.write_text(store)
    os.chmod(path, mode)
    result, connections = run(GOOD, tmp_path)
    assert result.returncode == 2 and connections == 0
    assert expected in result.stderr, result.stderr
    assert path.read_text() == store, "a refused store is never rewritten"


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            {
                "mas_email_smtp_host": "smtp.example.org",
                "mas_email_from": "auth@example.org",
                "mas_email_smtp_username": "auth",
            },
            "mas_smtp_password is missing: expected the SMTP password of mas_email_smtp_username, put there by hand",
        ),
        (
            {
                "mas_upstream_providers": [
                    {"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/", "client_id": "c"}
                ]
            },
            "mas_upstream_client_secret_01JCN7R2CGXQJ2XKM3Z5E9Q1VB is missing: expected the client secret upstream"
            " provider 01JCN7R2CGXQJ2XKM3Z5E9Q1VB gave you",
        ),
    ],  # fmt: skip
    ids=["smtp-password-missing", "provider-secret-missing"],
)
def test_secrets_only_the_operator_has_must_be_in_the_store(settings, expected, tmp_path):
    """They cannot be generated: a run stops before any connection and says which entry to add."""
    result, connections = run({**GOOD, **settings}, tmp_path)
    assert result.returncode == 2 and connections == 0
    assert expected in result.stderr, result.stderr
