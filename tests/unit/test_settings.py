"""Settings: good inputs give typed settings. Every refused input is tested through the command line, before any
connection, in tests/unit/test_bad_input.py."""

from tests.conftest import make_settings


def test_defaults_with_a_server_name_give_a_single_host_deployment():
    s = make_settings()
    assert s.matrix_server_name == "example.org"
    assert s.matrix_public_url == "https://matrix.example.org/"
    assert s.mas_public_url == "https://auth.example.org/"
    assert s.auth_mode == "native"
    assert s.mas_release_url.endswith(f"/v{s.mas_version}/mas-cli-x86_64-linux.tar.gz")
    p = s.placement
    assert (p.db, p.mas, p.synapse, p.proxy) == ("hs1", ("hs1",), ("hs1",), ("hs1",))
    assert (p.synapse_main, p.mas_primary, s.synapse_workers, s.has_workers) == ("hs1", "hs1", {"hs1": {}}, False)
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
    assert (s.matrix_public_url, s.mas_public_url) == ("https://hs.example.org/", "https://login.example.org:8443/")
