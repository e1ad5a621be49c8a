"""Settings validation: good inputs give typed settings; each bad input names the setting and what is expected."""

import pytest

from matrix_deploy.settings import SettingsError
from tests.conftest import make_settings


def problems(**kwargs) -> list[str]:
    with pytest.raises(SettingsError) as error:
        make_settings(**kwargs)
    return error.value.problems


def test_defaults_with_a_server_name_give_a_single_host_deployment():
    s = make_settings()
    assert s.server_name == "example.org"
    assert s.public_url == "https://matrix.example.org/"
    assert s.mas_public_url == "https://auth.example.org/"
    assert s.auth_mode == "native"
    assert s.mas.url.endswith(f"/v{s.mas.version}/mas-cli-x86_64-linux.tar.gz")
    p = s.placement
    assert (p.db, p.mas, p.synapse, p.proxy) == ("hs1", "hs1", "hs1", ("hs1",))
    assert p.reach("hs1", "hs1") == "127.0.0.1"
    assert p.listen("hs1", ["hs1"]) == ["127.0.0.1"]


def test_msc3861_mode_with_the_newest_synapse_that_has_it():
    s = make_settings(auth_mode="msc3861", synapse_version="1.156.0")
    assert (s.auth_mode, s.mas_homeserver_kind) == ("msc3861", "synapse")
    assert make_settings(auth_mode="msc3861", synapse_version="1.134.0").mas_homeserver_kind == "synapse_legacy"


def test_split_layout_uses_internal_addresses():
    hosts = {name: {"internal_address": f"10.0.0.{i}"} for i, name in enumerate(["db", "mas", "syn", "px"], 1)}
    s = make_settings(hosts=hosts, groups={"db": ["db"], "mas": ["mas"], "synapse": ["syn"], "proxy": ["px"]})
    p = s.placement
    assert p.reach("mas", "db") == "10.0.0.1"
    assert p.listen("syn", ["mas", "px"]) == ["127.0.0.1", "10.0.0.3"]
    assert p.roles_of("px") == {"proxy"}


def test_urls_are_normalised():
    s = make_settings(matrix_public_url="https://hs.example.org", mas_public_url="https://login.example.org:8443/")
    assert (s.public_url, s.mas_public_url) == ("https://hs.example.org/", "https://login.example.org:8443/")


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"matrix_server_name": None}, "matrix_server_name is not set: expected a DNS name"),
        (
            {"matrix_server_name": "https://example.org"},
            "matrix_server_name = 'https://example.org': expected a DNS name",
        ),
        (
            {"matrix_public_url": "matrix.example.org"},
            "matrix_public_url = 'matrix.example.org': expected an https URL",
        ),
        (
            {"mas_public_url": "http://auth.example.org/"},
            "mas_public_url = 'http://auth.example.org/': expected an https URL",
        ),
        ({"matrix_public_url": "https://x.example.org/matrix"}, "expected a bare https://host[:port]/ URL"),
        (
            {"mas_public_url": "https://matrix.example.org/"},
            "mas_public_url = 'https://matrix.example.org/': expected a host name of its own",
        ),
        ({"synapse_port": 0}, "synapse_port = 0: expected a TCP port number between 1 and 65535"),
        ({"mas_port": "8080"}, "mas_port = '8080': expected a TCP port number"),
        ({"mas_health_port": 8080}, "mas_health_port = 8080: already used by mas_port"),
        ({"postgres_port": 443}, "postgres_port = 443: already used by nginx (https)"),
        (
            {"synapse_version": "1.135.0"},
            "synapse_version = '1.135.0': expected 1.136.0 or newer with auth_mode 'native'",
        ),
        ({"synapse_version": "latest"}, "synapse_version = 'latest': expected a release version like 1.2.3"),
        ({"auth_mode": "password"}, "auth_mode = 'password': expected one of native, msc3861"),
        ({"auth_mode": "msc3861"}, "synapse_version = '1.163.2': expected 1.156.0 or older with auth_mode 'msc3861'"),
        ({"allow_auth_mode_downgrade": "yes"}, "allow_auth_mode_downgrade = 'yes': expected true or false"),
        ({"mas_release_sha256": None}, "mas_release_sha256 is not set: expected the release tarball's sha256"),
        ({"mas_release_sha256": "ABC"}, "mas_release_sha256 = 'ABC': expected the release tarball's sha256"),
        (
            {"mas_release_file": "/nonexistent/mas.tar.gz"},
            "mas_release_file = '/nonexistent/mas.tar.gz': expected an existing file",
        ),
        (
            {"mas_release_url": "ftp://mirror/mas.tgz"},
            "mas_release_url = 'ftp://mirror/mas.tgz': expected an http(s) URL",
        ),
        (
            {"tls_certificate": "/nonexistent.crt", "tls_certificate_key": "/nonexistent.key"},
            "tls_certificate = '/nonexistent.crt': expected an existing file",
        ),
        (
            {"tls": "files", "tls_certificate": "/etc/hostname"},
            "tls_certificate and tls_certificate_key: expected both set with tls = 'files'",
        ),
        ({"tls_certificate": "/etc/hostname"}, "tls_certificate: expected unset with tls = 'acme'"),
        ({"tls": "letsencrypt"}, "tls = 'letsencrypt': expected one of acme, files, self-signed"),
        (
            {"acme_directory_url": "http://ca.example/dir"},
            "acme_directory_url = 'http://ca.example/dir': expected the https URL",
        ),
        ({"acme_email": "nobody"}, "acme_email = 'nobody': expected an email address"),
        ({"admin_user": "Admin User"}, "admin_user = 'Admin User': expected a user name MAS accepts"),
        (
            {"postgres_version": 15},
            "postgres_version: no longer a setting: PostgreSQL's version follows each host's Debian release",
        ),
        (
            {"synapse_extra_config": {"enable_registration": True}},
            "synapse_extra_config.enable_registration: not allowed (registration is handled by MAS)",
        ),
        (
            {"synapse_extra_config": {"password_config": {"enabled": True}}},
            "synapse_extra_config.password_config: not allowed",
        ),
        (
            {"synapse_extra_config": {"experimental_features": {"msc3861": {}}}},
            "synapse_extra_config.experimental_features: not allowed",
        ),
        (
            {"synapse_extra_config": ["max_upload_size"]},
            "synapse_extra_config = ['max_upload_size']: expected a mapping",
        ),
        ({"mas_extra_config": {"matrix": {}}}, "mas_extra_config.matrix: not allowed"),
        ({"synapse_verison": "1.163.2"}, "synapse_verison: unknown setting; did you mean synapse_version?"),
        ({"backup_dir": "backups"}, "backup_dir = 'backups': expected an absolute directory path"),
        ({"backup_keep": 0}, "backup_keep = 0: expected a whole number of dumps to keep, 1 or more"),
    ],
)
def test_each_bad_setting_is_named_with_what_is_expected(data, expected):
    assert any(expected in p for p in problems(**data)), problems(**data)


def test_release_file_with_a_different_sha256_is_refused(tmp_path):
    release = tmp_path / "mas.tar.gz"
    release.write_bytes(b"not the pinned release")
    (message,) = problems(mas_release_file=str(release))
    assert "mas_release_file" in message and "expected the file the checksum was pinned for" in message


def test_roles_need_exactly_one_host_for_db_mas_synapse_and_one_or_more_proxies():
    found = problems(hosts={"a": {}, "b": {}}, groups={"db": ["a", "b"], "mas": [], "synapse": ["a"], "proxy": []})
    assert "role db: 2 hosts (a, b); expected exactly one host" in found
    assert "role mas: no host is in the 'mas' group; expected exactly one host" in found
    assert any(p.startswith("role proxy: no host") and "or more" in p for p in found)


def test_deployment_settings_must_agree_between_hosts():
    found = problems(
        hosts={"a": {"synapse_version": "1.163.2"}, "b": {"synapse_version": "1.162.0"}},
        groups={"db": ["a"], "mas": ["a"], "synapse": ["a"], "proxy": ["b"]},
    )
    assert any(p.startswith("synapse_version differs between hosts a") for p in found)


def test_every_problem_is_reported_at_once():
    assert len(problems(matrix_server_name="bad name", synapse_port=-1, admin_user="!")) == 3
