"""Production shapes without a lab: what host_state reads for named hosts, Debian releases and sudo
logins, and what is rendered from it. The same paths run against lab hosts in test_split (named
hosts, Debian 13, root) and test_e2e (Debian 13, sudo); see also test_resilience (Debian 12)."""

import pytest
import yaml
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import debian as platform
from matrix_deploy.engine.host_state import Snapshot
from matrix_deploy.services.mas import service as mas
from matrix_deploy.services.postgres import service as postgres
from matrix_deploy.services.synapse import service as synapse
from tests.conftest import make_settings

SPLIT = {"db": ["db1"], "mas": ["auth1"], "synapse": ["hs1"], "proxy": ["px1", "px2"]}


def snapshot(*lines):
    state = Snapshot().process(list(lines))
    state.roots = {}
    return state


def split_settings(addresses: dict[str, str]):
    return make_settings(hosts={h: {"internal_address": a} for h, a in addresses.items()}, groups=SPLIT)


def test_snapshot_reads_release_names_addresses_upload_dir_and_lock():
    state = snapshot(
        "O\tdebian\t13",
        "N\tlab-db\t10.99.0.11",
        "N\tlab-db\tfd00::11",
        "A\t10.99.0.12",
        "T\t/home/deploy/.matrix-deploy-uploads",
        "L\tbusy\ta matrix-deploy run from laptop (pid 42) since 2026-11-23T10:00:00Z",
    )
    assert state.os == ("debian", "13")
    assert state.resolved == {"lab-db": ["10.99.0.11", "fd00::11"]}
    assert state.addresses == ["10.99.0.12"]
    assert state.upload_dir == "/home/deploy/.matrix-deploy-uploads"
    assert state.lock == ("busy", "a matrix-deploy run from laptop (pid 42) since 2026-11-23T10:00:00Z")


def test_release_decides_postgres_and_nginx_and_refuses_the_rest():
    assert platform.release("debian", "13") == platform.Release("13", "trixie", 17, "3.13", True)
    assert platform.release("debian", "12") == platform.Release("12", "bookworm", 15, "3.11", False)
    for other in (("debian", "11"), ("ubuntu", "24.04"), ("", "")):
        assert platform.release(*other) is None
    assert platform.POSTGRES_UNITS == ("postgresql@15-main", "postgresql@17-main")


def test_names_resolve_as_the_host_resolves_them_and_unknown_names_are_refused():
    state = snapshot("N\tlab-db\t10.99.0.11", "A\t10.99.0.11", "N\tself.example\t127.0.1.1")
    assert state.resolve("10.0.0.5") == ["10.0.0.5"]
    assert state.resolve("fd00:0::5") == ["fd00::5"]
    assert state.resolve("lab-db") == ["10.99.0.11"]
    assert state.bind_address("lab-db") == ["10.99.0.11"]
    with pytest.raises(DeployError, match="'nowhere' does not resolve on this host"):
        state.resolve("nowhere")
    # Debian maps the host's own name to 127.0.1.1: binding that would serve nobody else.
    with pytest.raises(DeployError, match="resolves here to 127.0.1.1, none of which is an address of this host"):
        state.bind_address("self.example")


def test_networks_are_single_addresses_of_the_right_size():
    s = split_settings({"db1": "10.0.0.1", "auth1": "10.0.0.2", "hs1": "fd00::3", "px1": "proxy.internal",
                        "px2": "fd00::4"})  # fmt: skip
    p = s.placement
    resolve = {"proxy.internal": ["10.0.0.9", "fd00::9"]}.get
    assert p.networks(["hs1", "px1", "px2"], lambda a: resolve(a) or [a]) == [
        "10.0.0.9/32", "fd00::3/128", "fd00::4/128", "fd00::9/128",
    ]  # fmt: skip
    with pytest.raises(LookupError, match="proxy.internal is a host name"):
        p.networks(["px1"])
    assert p.endpoint("px2", "hs1", 8008) == "[fd00::3]:8008"
    assert p.endpoint("hs1", "hs1", 8008) == "127.0.0.1:8008"
    assert p.endpoint("px1", "auth1", 8080) == "10.0.0.2:8080"


def test_named_split_layout_renders_networks_for_mas_and_postgres(tmp_path):
    from matrix_deploy.operator import store as secrets_store
    from matrix_deploy.operator.inventory import Deployment, wanted_secrets

    s = split_settings({"db1": "db.internal", "auth1": "auth.internal", "hs1": "hs.internal", "px1": "px1.internal",
                        "px2": "fd00::4"})  # fmt: skip
    store = tmp_path / "s.yaml"
    d = Deployment(tmp_path / "i.py", s, secrets_store.load(store, wanted_secrets(s)), store)
    seen_on_mas = snapshot("N\tauth.internal\t10.0.0.2", "N\tpx1.internal\t10.0.0.7", "A\t10.0.0.2")
    config = yaml.safe_load(mas.render_config(d, net=seen_on_mas))
    assert config["http"]["trusted_proxies"] == ["127.0.0.1/8", "::1/128", "10.0.0.7/32", "fd00::4/128"]
    assert {b["host"] for b in config["http"]["listeners"][0]["binds"]} == {"127.0.0.1", "10.0.0.2"}
    assert config["matrix"]["endpoint"] == "http://hs.internal:8008/"
    seen_on_db = snapshot("N\tauth.internal\t10.0.0.2", "N\ths.internal\tfd00::3")
    assert postgres.hba_clients(d, seen_on_db.resolve) == ["127.0.0.1/32", "::1/128", "10.0.0.2/32", "fd00::3/128"]
    seen_on_synapse = snapshot("N\ths.internal\t10.0.0.3", "A\t10.0.0.3")
    homeserver = synapse.config(d, own_addresses=seen_on_synapse.bind_address)
    assert homeserver["listeners"][0]["bind_addresses"] == ["127.0.0.1", "10.0.0.3"]
    assert synapse.secret_contents(d)["pgpass"].startswith("db.internal:5432:synapse:synapse:")


def test_pgpass_escapes_an_ipv6_database_address(tmp_path):
    from matrix_deploy.operator import store as secrets_store
    from matrix_deploy.operator.inventory import Deployment, wanted_secrets

    s = split_settings({"db1": "fd00::1", "auth1": "10.0.0.2", "hs1": "10.0.0.3", "px1": "10.0.0.4", "px2": "10.0.0.5"})
    store = tmp_path / "s.yaml"
    d = Deployment(tmp_path / "i.py", s, secrets_store.load(store, wanted_secrets(s)), store)
    assert synapse.secret_contents(d)["pgpass"].startswith("fd00\\:\\:1:5432:synapse:synapse:")


def test_every_remote_command_of_the_deploy_holds_the_work_lock(monkeypatch):
    """A dead run's command is only waited for if it held the lock: no module runs server.shell itself."""
    import shlex
    import subprocess
    from pathlib import Path

    from matrix_deploy.engine import remote

    package = Path(remote.__file__).parent
    direct = [p.name for p in package.glob("*.py") if p.name != "remote.py" and "server.shell(" in p.read_text()]
    assert direct == []
    sent = {}
    monkeypatch.setattr(remote.server, "shell", lambda **kwargs: sent.update(kwargs))
    remote.shell(name="x", commands=["echo 'it''s' \"$HOME\" | tr a-z A-Z"], _if=None)
    (command,) = sent["commands"]
    assert command.startswith("flock /var/lib/matrix-deploy/work.lock sh -c ")
    # The script survives the quoting: run it here with the lock file swapped for a scratch one.
    local = command.replace(remote.WORK_LOCK, shlex.quote(str(Path("/tmp") / f"work-lock-test-{id(sent)}")))
    out = subprocess.run(local, shell=True, capture_output=True, text=True, env={"HOME": "/h", "PATH": "/usr/bin:/bin"})
    assert out.stdout == "ITS /H\n", out
