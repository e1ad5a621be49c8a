"""Bad input stops `pyinfra inventory deploy.py` with a clear message before any host is contacted.

Every refused input of the settings and of the secrets store goes through the real command line: the
inventory's hosts are a local TCP listener that counts connections; a good inventory makes pyinfra
connect to it (the control), a bad one must exit 2 without a connection, and each problem it lists
must name the setting and say what is expected.
"""

import json
import os
import socket
import subprocess
import threading

import pytest

from tests.support.lab import ROOT

GOOD = {"matrix_server_name": "example.org", "mas_release_sha256": "a" * 64}
SPLIT = {"db": ["db"], "mas": ["mas"], "synapse": ["syn"], "proxy": ["px"]}


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


def run(settings: dict, tmp_path, hosts=None, groups=None) -> tuple[subprocess.CompletedProcess, int]:
    counter = ConnectionCounter()
    env = {
        **os.environ,
        "MATRIX_DEPLOY_PROBE_PORT": str(counter.port),
        "MATRIX_DEPLOY_PROBE_SETTINGS": json.dumps({"secrets_dir": str(tmp_path / "secrets"), **settings}),
        "MATRIX_DEPLOY_PROBE_HOSTS": json.dumps(hosts) if hosts is not None else "",
        "MATRIX_DEPLOY_PROBE_GROUPS": json.dumps(groups) if groups is not None else "",
    }
    result = subprocess.run(
        [str(ROOT / ".venv/bin/pyinfra"), "-y", "tests/support/inventories/probe.py", "deploy.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    counter.server.close()
    return result, counter.count


def problems_listed(stderr: str) -> list[str]:
    """The problems the run listed, each "  - " item with its continuation lines (a YAML error spans several)."""
    listed = stderr.split("no host was contacted:", 1)[-1].split("\n  - ")[1:]
    return [problem.strip() for problem in listed]


def assert_refused(result, connections, expected: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert connections == 0
    assert "no host was contacted" in result.stderr
    assert expected in result.stderr, result.stderr
    listed = problems_listed(result.stderr)
    assert listed, result.stderr
    for problem in listed:
        assert "expected" in problem, f"this message does not say what is expected: {problem}"


def test_control_good_settings_do_reach_the_host(tmp_path):
    result, connections = run(GOOD, tmp_path)
    assert connections >= 1, result.stderr
    assert result.returncode != 0  # the counter is no SSH server


def test_control_a_good_split_layout_does_reach_its_hosts(tmp_path):
    hosts = {name: {"internal_address": f"10.0.0.{i}"} for i, name in enumerate(["db", "mas", "syn", "px"], 1)}
    result, connections = run(GOOD, tmp_path, hosts, SPLIT)
    assert connections >= 4, result.stderr


SCALE = {"db": ["a"], "mas": ["a", "b"], "synapse": ["a", "b"], "proxy": ["a"]}


def test_control_a_good_scale_layout_does_reach_its_hosts(tmp_path):
    """Two MAS instances, two Synapse hosts: the main process and workers on one, workers on the other."""
    hosts = {"a": {"internal_address": "10.0.0.1", "synapse_workers": {"event_persister": 1}},
             "b": {"internal_address": "10.0.0.2", "synapse_workers": {"generic": 2}}}  # fmt: skip
    result, connections = run(GOOD, tmp_path, hosts, SCALE)
    assert connections >= 2, result.stderr


# Every refused setting: (settings over GOOD, the message expected).
BAD = [
    ({"matrix_server_name": None}, "matrix_server_name is not set: expected a DNS name"),
    ({"matrix_server_name": "Example Org"}, "matrix_server_name = 'Example Org': expected a DNS name"),
    ({"matrix_server_name": "https://example.org"}, "matrix_server_name = 'https://example.org': expected a DNS name"),
    ({"matrix_public_url": "matrix.example.org"}, "matrix_public_url = 'matrix.example.org': expected an https URL"),
    ({"mas_public_url": "http://auth.example.org/"}, "mas_public_url = 'http://auth.example.org/': expected an https URL"),
    ({"matrix_public_url": "https://x.example.org/matrix"}, "expected a bare https://host[:port]/ URL"),
    ({"mas_public_url": "https://matrix.example.org/"},
     "mas_public_url = 'https://matrix.example.org/': expected a host name of its own"),
    ({"synapse_port": 99999}, "synapse_port = 99999: expected a TCP port number between 1 and 65535"),
    ({"synapse_port": 0}, "synapse_port = 0: expected a TCP port number between 1 and 65535"),
    ({"mas_port": "8080"}, "mas_port = '8080': expected a TCP port number"),
    ({"mas_port": 8008}, "mas_port = 8008: already used by synapse_port; expected a port of its own"),
    ({"mas_internal_port": 8080}, "mas_internal_port = 8080: already used by mas_port"),
    ({"postgres_port": 443}, "postgres_port = 443: already used by nginx (https)"),
    ({"synapse_version": "1.120.0"}, "synapse_version = '1.120.0': expected 1.136.0 or newer"),
    ({"synapse_version": "1.135.0"}, "synapse_version = '1.135.0': expected 1.136.0 or newer with auth_mode 'native'"),
    ({"synapse_version": "latest"}, "synapse_version = 'latest': expected a release version like 1.2.3"),
    ({"mas_version": "v1"}, "mas_version = 'v1': expected a release version"),
    ({"auth_mode": "oauth"}, "auth_mode = 'oauth': expected one of native, msc3861"),
    ({"auth_mode": "msc3861"}, "synapse_version = '1.163.2': expected 1.156.0 or older with auth_mode 'msc3861'"),
    ({"allow_auth_mode_downgrade": "yes"}, "allow_auth_mode_downgrade = 'yes': expected true or false"),
    ({"mas_release_sha256": None}, "mas_release_sha256 is not set: expected the release tarball's sha256"),
    ({"mas_release_sha256": "xyz"}, "mas_release_sha256 = 'xyz': expected the release tarball's sha256"),
    ({"mas_release_sha256": "ABC"}, "mas_release_sha256 = 'ABC': expected the release tarball's sha256"),
    ({"mas_release_file": "/nonexistent/mas.tar.gz"},
     "mas_release_file = '/nonexistent/mas.tar.gz': expected an existing file"),
    ({"mas_release_url": "ftp://mirror/mas.tgz"}, "mas_release_url = 'ftp://mirror/mas.tgz': expected an http(s) URL"),
    ({"tls_certificate": "/no/such.crt", "tls_certificate_key": "/no/such.key"},
     "tls_certificate = '/no/such.crt': expected an existing file"),
    ({"admin_user": "root user"}, "admin_user = 'root user': expected a user name MAS accepts"),
    ({"synapse_extra_config": {"enable_registration": True}},
     "synapse_extra_config.enable_registration: not allowed (registration is handled by MAS)"),
    ({"synapse_extra_config": {"password_config": {"enabled": True}}},
     "synapse_extra_config.password_config: not allowed"),
    ({"synapse_extra_config": {"oidc_providers": []}}, "synapse_extra_config.oidc_providers: not allowed"),
    ({"synapse_extra_config": {"experimental_features": {"msc3861": {}}}},
     "synapse_extra_config.experimental_features: not allowed"),
    ({"synapse_extra_config": ["max_upload_size"]}, "synapse_extra_config = ['max_upload_size']: expected a mapping"),
    ({"synapse_extra_config": {"federation_custom_ca_list": ["/x.pem"]}},
     "synapse_extra_config.federation_custom_ca_list: not allowed (set synapse_federation_ca_certificates instead)"),
    ({"synapse_federation_ca_certificates": "/etc/hostname"},
     "synapse_federation_ca_certificates = '/etc/hostname': expected a list of CA certificate files"),
    ({"synapse_federation_ca_certificates": ["/etc/hostname"]},
     "synapse_federation_ca_certificates = '/etc/hostname': expected a file with exactly one PEM certificate (it has 0)"),
    ({"synapse_federation_ca_certificates": ["/no/ca.pem"]},
     "synapse_federation_ca_certificates = '/no/ca.pem': expected a list of existing, readable CA certificate files"),
    ({"synapse_workers": {"reader": 2}}, "synapse_workers.reader: unknown worker kind; expected one of generic"),
    ({"synapse_workers": {"background": 2}}, "synapse_workers.background = 2: expected 0 or 1"),
    ({"synapse_workers": {"generic": -1}}, "synapse_workers.generic = -1: expected a count from 0 to 20"),
    ({"synapse_workers": {"generic": 3}, "synapse_worker_port": 8080},
     "synapse_worker_port = 8080: already used by mas_port"),
    ({"synapse_workers": {"generic": 2}, "synapse_worker_port": 8079},
     "synapse_worker_port = 8079 (its ports run up to 8080): 8080 is already used by mas_port"),
    ({"mas_extra_config": {"secrets": {}}}, "mas_extra_config.secrets: not allowed"),
    ({"mas_extra_config": {"matrix": {}}}, "mas_extra_config.matrix: not allowed"),
    ({"synapse_verison": "1.163.2"}, "synapse_verison: unknown setting; did you mean synapse_version?"),
    ({"backup_dir": "backups"}, "backup_dir = 'backups': expected an absolute directory path"),
    ({"backup_keep": 0}, "backup_keep = 0: expected a whole number of dumps to keep, 1 or more"),
    ({"secrets_dir": ""}, "secrets_dir = '': expected a directory path"),
    # Scheduled backups (issue 21): the repository's form is checked before any connection.
    ({"backup_repository": "backups"}, "backup_repository = 'backups': expected an absolute directory on the hosts"),
    ({"backup_repository": "sftp:backup.example.org:/srv/restic"},
     "backup_repository = 'sftp:backup.example.org:/srv/restic': expected an absolute directory on the hosts"),
    ({"backup_repository": "sftp:u@host:relative"}, "backup_repository = 'sftp:u@host:relative': expected"),
    ({"backup_repository": "s3:s3.amazonaws.com/bucket"}, "backup_repository = 's3:s3.amazonaws.com/bucket': expected"),
    ({"backup_repository": "/srv/$(reboot)"}, "backup_repository = '/srv/$(reboot)': expected"),
    ({"backup_repository": "/srv/../etc"}, "backup_repository = '/srv/../etc': expected"),
    ({"backup_time": "daily"}, "backup_time = 'daily': expected a time of day HH:MM"),
    ({"backup_time": "24:00"}, "backup_time = '24:00': expected a time of day HH:MM"),
    ({"backup_keep_daily": -1}, "backup_keep_daily = -1: expected a whole number of daily backups to keep"),
    ({"backup_keep_weekly": "4"}, "backup_keep_weekly = '4': expected a whole number of weekly backups to keep"),
    ({"backup_repository": "/srv/restic", "backup_keep_daily": 0, "backup_keep_weekly": 0},
     "backup_keep_daily = 0 and backup_keep_weekly = 0: expected at least one backup kept"),
    # Production shapes and the rollout.
    (
        {"tls": "files", "tls_certificate": "/etc/hostname"},
        "tls_certificate and tls_certificate_key: expected both set with tls = 'files'",
    ),
    ({"tls_certificate": "/etc/hostname"}, "tls_certificate: expected unset with tls = 'acme'"),
    ({"tls": "letsencrypt"}, "tls = 'letsencrypt': expected one of acme, files, self-signed"),
    ({"acme_directory_url": "http://ca.example/dir"}, "acme_directory_url = 'http://ca.example/dir': expected the https URL"),
    ({"acme_email": "nobody"}, "acme_email = 'nobody': expected an email address"),
    ({"acme_directory_ca": "/no/such.pem"}, "acme_directory_ca = '/no/such.pem': expected an existing file"),
    ({"postgres_version": 15}, "postgres_version: no longer a setting: PostgreSQL's version follows each host's Debian"),
    ({"synapse_version": "1.160.0"}, "synapse_version = '1.160.0': expected a version with a lock in the repository"),
    ({"secrets_age_identity": "/no/such.key"}, "secrets_age_identity = '/no/such.key': expected an existing file"),
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
     "mas_upstream_providers[0].claims.localpart.action: expected `require` when skip_confirmation is true"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "claims": {"localpart": {"on_conflict": "add"}}}]},
     "claims.localpart.action: expected `force` or `require` when on_conflict is `add`"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "claims": {"email": {"action": "always"}}}]},
     "claims.email.action = 'always': expected one of ignore, suggest, force, require"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "client_secret": "inline"}]},
     "mas_upstream_providers[0].client_secret: unknown"),
    ({"mas_upstream_providers": [{"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/",
                                  "client_id": "c", "synapse_idp_id": "dex"}]},
     "mas_upstream_providers[0].synapse_idp_id = 'dex': expected the old Synapse's name of the provider, `oidc` or "
     "`oidc-<its idp_id>`"),
    ({"mas_upstream_providers": [
        {"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/", "client_id": "c",
         "synapse_idp_id": "oidc-dex"},
        {"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VC", "issuer": "https://idp.example.org/", "client_id": "d",
         "synapse_idp_id": "oidc-dex"}]},
     "mas_upstream_providers[1].synapse_idp_id = 'oidc-dex': expected a provider of its own (another has it)"),
    ({"mas_extra_config": {"email": {"transport": "blackhole"}}}, "mas_extra_config.email: not allowed"),
    ({"mas_extra_config": {"upstream_oauth2": {"providers": []}}}, "mas_extra_config.upstream_oauth2: not allowed"),
    ({"mas_extra_config": {"account": {"password_registration_enabled": True}}},
     "mas_extra_config.account.password_registration_enabled: not allowed"),
    # The host firewall (issue 22).
    ({"firewall": "on"}, "firewall = 'on': expected true or false"),
    ({"firewall_ssh_port": 2222}, "firewall_ssh_port = 2222: host 127.0.0.1 is reached on ssh_port"),
    ({"firewall_ssh_port": 70000}, "firewall_ssh_port = 70000: expected a TCP port number"),
    ({"firewall_metrics_scrapers": ["prometheus.example.org", "not a host!"]},
     "firewall_metrics_scrapers = 'not a host!': expected an IP address, a network like 10.0.0.0/24, or a host name"),
    ({"firewall_metrics_scrapers": ["10.0.0.300"]}, "firewall_metrics_scrapers = '10.0.0.300': expected an IP address"),
    ({"firewall_metrics_scrapers": "10.0.0.5"}, "firewall_metrics_scrapers = '10.0.0.5': expected a list"),
    ({"firewall_metrics_scrapers": ["10.0.0.5", "10.0.0.5"]},
     "firewall_metrics_scrapers = '10.0.0.5': expected each scraping host listed once"),
    ({"firewall_open_ports": [8443, 8443]}, "firewall_open_ports = 8443: expected each port listed once"),
    ({"firewall_open_ports": ["http"]}, "firewall_open_ports = 'http': expected a TCP port number"),
    ({"firewall_open_port": [8443]}, "firewall_open_port: unknown setting; did you mean firewall_open_ports?"),
]  # fmt: skip


@pytest.mark.parametrize("settings, expected", BAD, ids=[f"{i:02d}-{m.split(' ')[0]}" for i, (_, m) in enumerate(BAD)])
def test_bad_setting_stops_before_any_connection(settings, expected, tmp_path):
    assert_refused(*run({**GOOD, **settings}, tmp_path), expected)


def test_release_file_with_another_sha256_stops_before_any_connection(tmp_path):
    release = tmp_path / "mas.tar.gz"
    release.write_bytes(b"not the pinned release")
    result, connections = run({**GOOD, "mas_release_file": str(release)}, tmp_path)
    assert_refused(result, connections, "expected the file the checksum was pinned for")


def test_every_problem_is_listed_at_once(tmp_path):
    result, connections = run(
        {**GOOD, "matrix_server_name": "bad name", "synapse_port": -1, "admin_user": "!"}, tmp_path
    )
    assert_refused(result, connections, "synapse_port = -1")
    assert len(problems_listed(result.stderr)) == 3, result.stderr


# Layouts: (hosts, groups, the message expected); every host is the counting listener.
BAD_LAYOUTS = [
    ({"a": {}, "b": {}}, {"db": ["a", "b"], "mas": ["a"], "synapse": ["a"], "proxy": ["a"]},
     "role db: 2 hosts (a, b); expected exactly one host"),
    ({"a": {}}, {"db": ["a"], "synapse": ["a"], "proxy": ["a"]},
     "role mas: no host is in the 'mas' group; expected exactly one host or more"),
    ({"a": {}}, {"db": ["a"], "mas": ["a"], "synapse": ["a"]},
     "role proxy: no host is in the 'proxy' group; expected exactly one host or more"),
    ({"a": {"synapse_version": "1.163.2"}, "b": {"synapse_version": "1.162.0"}},
     {"db": ["a"], "mas": ["a"], "synapse": ["a"], "proxy": ["b"]},
     "synapse_version differs between hosts a ('1.163.2') and b ('1.162.0'): expected one value"),
    ({"a": {"internal_address": "not an address!"}}, {"db": ["a"], "mas": ["a"], "synapse": ["a"], "proxy": ["a"]},
     "internal_address of host a = 'not an address!': expected an IP address or host name"),
    ({"a": {"synapse_workers": {"generic": 1}}, "b": {}}, SCALE,
     "host b: synapse_workers = {}: expected workers on it: only the first host of the synapse group (a) runs"),
    ({"a": {"synapse_workers": {"background": 1}}, "b": {"synapse_workers": {"background": 1}}}, SCALE,
     "synapse_workers: a background worker on hosts a, b; expected one in the deployment"),
    ({"a": {"synapse_workers": {"media_repository": 1}}, "b": {"synapse_workers": {"media_repository": 1}}}, SCALE,
     "synapse_workers: media_repository workers on hosts a, b; expected them on one host"),
    ({"a": {}, "b": {"synapse_workers": {"generic": "two"}}}, SCALE,
     "host b: synapse_workers.generic = 'two': expected a count from 0 to 20"),
]  # fmt: skip


@pytest.mark.parametrize(
    "hosts, groups, expected", BAD_LAYOUTS,
    ids=["two-db", "no-mas", "no-proxy", "differ", "address", "idle-worker-host", "two-background", "media-split",
         "worker-count"],
)  # fmt: skip
def test_bad_layout_stops_before_any_connection(hosts, groups, expected, tmp_path):
    assert_refused(*run(GOOD, tmp_path, hosts, groups), expected)


@pytest.mark.parametrize(
    "store, mode, expected",
    [
        ("matrix_shared_secret: tooshort\n", 0o600, "matrix_shared_secret is 8 characters long; expected at least 32"),
        ("matrix_shared_secret: short\n", 0o600, "matrix_shared_secret is 5 characters long; expected at least 32"),
        ("matrix_shared_secret: " + "x" * 40 + "\n", 0o644, "has mode 0644: expected 0600"),
        ("{unclosed: [\n", 0o600, "is not valid YAML"),
        ("- a list\n", 0o600, "expected a mapping of secret names to strings"),
        ("some_token: " + "x" * 40 + "\n", 0o600, "unknown secret 'some_token'; expected one of"),
        ("mas_encryption_key: " + "z" * 64 + "\n", 0o600, "mas_encryption_key: expected 64 hex digits"),
        ("mas_encryption_key: " + "a" * 10 + "\n", 0o600, "mas_encryption_key: expected 64 hex digits"),
        # MAS loads its signing keys only when its server starts: checked here, before any connection.
        ("mas_signing_key_rsa: not a key\n", 0o600, "mas_signing_key_rsa: not an unencrypted PEM private key"),
        (
            "mas_signing_key_ec: |\n  -----BEGIN PRIVATE KEY-----\n  MIIB\n  -----END PRIVATE KEY-----\n",
            0o600,
            "mas_signing_key_ec: not an unencrypted PEM private key",
        ),
    ],
    ids=[
        "short-secret",
        "short-hand-set",
        "store-mode",
        "store-damaged",
        "store-not-a-mapping",
        "store-unknown-entry",
        "encryption-key-not-hex",
        "encryption-key-length",
        "store-bad-rsa-key",
        "store-bad-ec-key",
    ],  # fmt: skip
)
def test_bad_secrets_store_stops_before_any_connection(store, mode, expected, tmp_path):
    path = tmp_path / "secrets" / "probe.yaml"
    path.parent.mkdir(mode=0o700)
    path.write_text(store)
    os.chmod(path, mode)
    result, connections = run(GOOD, tmp_path)
    assert_refused(result, connections, expected)
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


def test_unreadable_secrets_store_stops_before_any_connection(tmp_path):
    (tmp_path / "secrets" / "probe.yaml").mkdir(parents=True, mode=0o700)  # root reads any file: a directory it cannot
    assert_refused(*run(GOOD, tmp_path), "cannot be read (Is a directory): expected a readable file")
