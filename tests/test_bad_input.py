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
]


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
    ],
    ids=["short-secret", "store-mode", "store-damaged", "store-unknown-entry"],
)
def test_bad_secrets_store_stops_before_any_connection(store, mode, expected, tmp_path):
    path = tmp_path / "secrets" / "probe.yaml"
    path.parent.mkdir(mode=0o700)
    path.write_text(store)
    os.chmod(path, mode)
    result, connections = run(GOOD, tmp_path)
    assert result.returncode == 2 and connections == 0
    assert expected in result.stderr, result.stderr
    assert path.read_text() == store, "a refused store is never rewritten"
