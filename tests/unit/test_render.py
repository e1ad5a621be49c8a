"""Rendered configs are accepted by the real checkers: MAS's schema, Synapse's own config checker.

nginx -t of the rendered site runs in a lab host, which has the real nginx (tests/lab/test_e2e.py): the operator's
machine has no nginx, and a check that cannot run must fail, not be skipped."""

import datetime
import hashlib
import json
import re
import shutil
import subprocess
import venv
from pathlib import Path

import fastjsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.inventory import Deployment, wanted_secrets
from matrix_deploy.services.mas import service as mas
from matrix_deploy.services.nginx import service as nginx
from matrix_deploy.services.synapse import locks
from matrix_deploy.services.synapse import service as synapse
from matrix_deploy.services.synapse import workers as synapse_workers
from matrix_deploy.services.synapse.paths import SYNAPSE_DATA, SYNAPSE_ETC
from tests.conftest import SHARED, make_settings

CACHE = Path.home() / ".cache/matrix-deploy"


def test_mas_config_is_valid_against_the_mas_schema(deployment):
    validate = fastjsonschema.compile(json.loads((SHARED / "mas/config.schema.json").read_text()))
    config = yaml.safe_load(mas.render_config(deployment))
    validate(config)
    assert config["matrix"] == {
        "kind": "synapse",
        "homeserver": "example.org",
        "endpoint": "http://127.0.0.1:8008/",
        "secret_file": "/etc/mas/secrets/matrix_secret",
    }
    assert "secret" not in config["matrix"] and "password" not in config["database"]
    for value in deployment.secrets.values.values():
        assert value.strip() not in mas.render_config(deployment)


def test_mas_schema_check_catches_a_broken_config(deployment):
    validate = fastjsonschema.compile(json.loads((SHARED / "mas/config.schema.json").read_text()))
    config = yaml.safe_load(mas.render_config(deployment))
    config["matrix"]["kind"] = "dendrite"
    with pytest.raises(fastjsonschema.JsonSchemaException):
        validate(config)


def test_one_shared_secret_on_both_sides(deployment):
    synapse_side = synapse.secret_contents(deployment)["mas_secret"].strip()
    mas_side = mas.secret_files(deployment)["/etc/mas/secrets/matrix_secret"]
    assert synapse_side == mas_side
    assert yaml.safe_load(synapse.render_config(deployment))["matrix_authentication_service"] == {
        "enabled": True,
        "endpoint": "http://127.0.0.1:8080/",
        "secret_path": "/etc/synapse/secrets/mas_secret",
    }


def synapse_interpreter(version: str) -> Path:
    """Synapse's own interpreter for `version`, installed from its lock like on the hosts, cached outside the clone."""
    lock = locks.path(version)
    target = CACHE / f"synapse-{version}-{hashlib.sha256(lock.read_bytes()).hexdigest()[:8]}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        venv.create(target, with_pip=True)
        subprocess.run([target / "bin/pip", "install", "-q", "--no-deps", "--require-hashes", "--only-binary", ":all:",
                        "-r", lock], check=True)  # fmt: skip
        (target / ".complete").touch()
    return target / "bin/python"


@pytest.fixture(scope="session")
def synapse_python() -> Path:
    """The interpreter of the Synapse version deployed by default."""
    from tests.conftest import defaults

    return synapse_interpreter(defaults()["synapse_version"])


@pytest.fixture
def msc3861_deployment(tmp_path) -> Deployment:
    settings = make_settings(secrets_dir=str(tmp_path / "secrets"), auth_mode="msc3861", synapse_version="1.156.0")
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    return Deployment(Path("test.py"), settings, secrets_store.load(store, wanted_secrets(settings)), store)


def test_msc3861_mas_config_has_the_synapse_client_and_is_schema_valid(msc3861_deployment):
    validate = fastjsonschema.compile(json.loads((SHARED / "mas/config.schema.json").read_text()))
    config = yaml.safe_load(mas.render_config(msc3861_deployment))
    validate(config)
    assert config["clients"] == [
        {
            "client_id": "0000000000000000000SYNAPSE",
            "client_auth_method": "client_secret_basic",
            "client_secret_file": "/etc/mas/secrets/synapse_client_secret",
        }
    ]
    assert config["matrix"]["kind"] == "synapse"


def test_msc3861_synapse_config_is_accepted_by_synapse_1_156(msc3861_deployment, tmp_path):
    config = yaml.safe_load(synapse.render_config(msc3861_deployment))
    assert "matrix_authentication_service" not in config
    msc3861 = config["experimental_features"]["msc3861"]
    assert msc3861["client_id"] == "0000000000000000000SYNAPSE" and msc3861["admin_token_path"].endswith("/mas_secret")
    result = _synapse_check(synapse_interpreter("1.156.0"), msc3861_deployment, tmp_path)
    assert result.returncode == 0, result.stderr


def test_msc3861_config_is_refused_by_a_synapse_that_removed_it(synapse_python, msc3861_deployment, tmp_path):
    result = _synapse_check(synapse_python, msc3861_deployment, tmp_path)
    assert result.returncode != 0
    assert "msc3861 was removed" in result.stderr + result.stdout


def _synapse_check(python: Path, deployment, tmp_path: Path, extra: dict | None = None, here: str | None = None):
    """Run `python -m synapse.config -c` on the rendered config (of Synapse host `here`), with its files moved
    under tmp_path."""
    text = (
        synapse.render_config(deployment, here)
        .replace(SYNAPSE_ETC, str(tmp_path / "etc"))
        .replace(SYNAPSE_DATA, str(tmp_path / "data"))
    )
    config = yaml.safe_load(text) | (extra or {})
    (tmp_path / "etc/secrets").mkdir(parents=True)
    for name, content in synapse.secret_contents(deployment, here).items():
        (tmp_path / "etc/secrets" / name).write_text(content)
    for ca, content in synapse.federation_cas(deployment):
        moved = Path(ca.replace(SYNAPSE_ETC, str(tmp_path / "etc")))
        moved.parent.mkdir(parents=True, exist_ok=True)
        moved.write_text(content)
    (tmp_path / "etc/log.yaml").write_text("version: 1\n")
    path = tmp_path / "etc/homeserver.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([python, "-m", "synapse.config", "-c", path], capture_output=True, text=True)


def test_synapse_config_is_accepted_by_synapses_checker(synapse_python, deployment, tmp_path):
    result = _synapse_check(synapse_python, deployment, tmp_path)
    assert result.returncode == 0, result.stderr


def test_synapse_checker_rejects_what_synapse_forbids_beside_mas(synapse_python, deployment, tmp_path):
    result = _synapse_check(synapse_python, deployment, tmp_path, {"enable_registration": True})
    assert result.returncode != 0
    assert "Registration cannot be enabled" in result.stderr + result.stdout


def _ca_file(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a private federation's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_federation_cas_are_files_synapse_reads(synapse_python, tmp_path):
    settings = make_settings(
        secrets_dir=str(tmp_path / "secrets"), synapse_federation_ca_certificates=[str(_ca_file(tmp_path))]
    )
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    d = Deployment(Path("test.py"), settings, secrets_store.load(store, wanted_secrets(settings)), store)
    assert synapse.config(d)["federation_custom_ca_list"] == [f"{SYNAPSE_ETC}/federation-ca/ca-1.pem"]
    checks = tmp_path / "check"
    checks.mkdir()
    result = _synapse_check(synapse_python, d, checks)
    assert result.returncode == 0, result.stderr
    # Synapse reads each file: a broken one is refused by its own checker.
    (checks / "etc/federation-ca/ca-1.pem").write_text("not a certificate\n")
    broken = subprocess.run([synapse_python, "-m", "synapse.config", "-c", checks / "etc/homeserver.yaml"],
                            capture_output=True, text=True)  # fmt: skip
    assert broken.returncode != 0 and "custom CA certificate" in broken.stderr + broken.stdout


def test_no_federation_cas_by_default(deployment):
    assert "federation_custom_ca_list" not in synapse.config(deployment)


def test_compat_location_matches_only_the_compat_endpoints(deployment):
    site = nginx.render_site(deployment, "hs1")
    (pattern,) = re.findall(r"location ~ (\^/_matrix/client/\S+) \{", site)
    compat = re.compile(pattern)
    for path in ["/_matrix/client/v3/login", "/_matrix/client/r0/logout", "/_matrix/client/v3/logout/all",
                 "/_matrix/client/v3/refresh", "/_matrix/client/v3/login/sso/redirect", "/_matrix/client/unstable/login"]:  # fmt: skip
        assert compat.match(path), path
    for path in ["/_matrix/client/v3/rooms/!r:x/login", "/_matrix/client/v3/loginx", "/_matrix/client/v3/user/@login:x/filter",
                 "/_matrix/client/versions", "/_matrix/client/v3/profile/@refresh:x", "/_matrix/client/v3/account/whoami"]:  # fmt: skip
        assert not compat.match(path), path


def test_well_known_documents_are_json(deployment):
    site = nginx.render_site(deployment, "hs1")
    client = json.loads(re.search(r"location = /.well-known/matrix/client \{[^}]*return 200 '([^']*)'", site).group(1))
    server = json.loads(re.search(r"location = /.well-known/matrix/server \{[^}]*return 200 '([^']*)'", site).group(1))
    assert client["m.homeserver"]["base_url"] == "https://matrix.example.org/"
    assert client["org.matrix.msc2965.authentication"]["issuer"] == "https://auth.example.org/"
    assert server == {"m.server": "matrix.example.org:443"}


ALL_KINDS = {"generic": 2, "event_persister": 1, "federation_sender": 1, "media_repository": 1, "pusher": 1,
             "background": 1}  # fmt: skip


def _with_workers(tmp_path, counts=ALL_KINDS) -> Deployment:
    settings = make_settings(secrets_dir=str(tmp_path / "secrets"), synapse_workers=counts)
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    return Deployment(Path("test.py"), settings, secrets_store.load(store, wanted_secrets(settings)), store)


def _check_workers(python: Path, d: Deployment, tmp_path: Path, here: str = "hs1") -> None:
    """Synapse's checker on the homeserver.yaml of Synapse host `here` and each of its workers' configs."""
    checks = tmp_path / "check"
    checks.mkdir()
    assert _synapse_check(python, d, checks, here=here).returncode == 0
    (checks / "etc/workers").mkdir()
    for w in synapse_workers.workers(d.settings):
        if w.host != here:
            continue
        path = checks / f"etc/workers/{w.name}.yaml"
        text = yaml.safe_dump(synapse_workers.worker_config(w, ["127.0.0.1"], f"{SYNAPSE_ETC}/log.yaml"))
        path.write_text(text.replace(SYNAPSE_ETC, str(checks / "etc")))
        result = subprocess.run([python, "-m", "synapse.config", "-c", checks / "etc/homeserver.yaml", "-c", path],
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, (w.name, result.stderr)


def test_worker_configs_are_accepted_by_synapses_checker(synapse_python, tmp_path):
    d = _with_workers(tmp_path)
    _check_workers(synapse_python, d, tmp_path)
    shared = synapse.config(d)
    assert shared["stream_writers"] == {"events": ["event_persister-1"]}
    assert set(shared["instance_map"]) == {"main", *(w.name for w in synapse_workers.workers(d.settings))}
    assert "replication" in shared["listeners"][0]["resources"][0]["names"]


def test_no_workers_no_redis_and_no_replication(deployment):
    config = synapse.config(deployment)
    assert not {"redis", "instance_map", "worker_replication_secret_path"} & set(config)
    assert config["listeners"][0]["resources"][0]["names"] == ["client", "federation"]
    assert "matrix_synapse_generic" not in nginx.render_site(deployment, "hs1")


def test_nginx_sends_each_path_to_the_process_that_serves_it(tmp_path):
    site = nginx.render_site(_with_workers(tmp_path), "hs1")
    locations = re.findall(r"location ~ (\S+) \{\s*proxy_pass http://(\w+);", site)

    def served_by(path):
        return next(upstream for pattern, upstream in locations if re.search(pattern, path))

    cases = {
        "/_matrix/client/v3/login": "matrix_mas",  # the compatibility layer comes before the workers
        "/_matrix/client/v3/sync": "matrix_synapse_sync",
        "/_matrix/client/versions": "matrix_synapse_generic",
        "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1": "matrix_synapse_generic",
        "/_matrix/client/v3/rooms/!r:x/messages": "matrix_synapse",  # pagination stays with the main process
        "/_matrix/federation/v1/send/123": "matrix_synapse_federation_in",
        "/_matrix/client/v1/media/download/x/y": "matrix_synapse_media",
        "/_synapse/client/pick_idp": "matrix_synapse",
    }
    assert {path: served_by(path) for path in cases} == cases
    assert (
        "upstream matrix_synapse_generic {  server 127.0.0.1:8100 max_fails=0; server 127.0.0.1:8101 max_fails=0;"
        in site
    )


@pytest.mark.parametrize("version", locks.versions())
def test_every_lock_has_a_txredisapi_synapse_can_use(version):
    """txredisapi 1.6.0 breaks Synapse's Redis connection (workers' main process dies at start: seen with 1.156.0
    on Debian 12); Synapse >= 1.163 caps it itself, older locks get the cap from locks.requirements()."""
    pinned = locks.pins(locks.path(version).read_text())
    assert tuple(int(p) for p in pinned["txredisapi"].split(".")) < (1, 6, 0), pinned["txredisapi"]


def _scale(tmp_path) -> Deployment:
    """Two Synapse hosts (s1: main process and the event persister, s2: generic workers), MAS on both."""
    hosts = {"s1": {"internal_address": "10.0.0.1", "synapse_workers": {"event_persister": 1}},
             "s2": {"internal_address": "10.0.0.2", "synapse_workers": {"generic": 2}}}  # fmt: skip
    groups = {"db": ["s1"], "mas": ["s1", "s2"], "synapse": ["s1", "s2"], "proxy": ["s1"]}
    settings = make_settings(hosts=hosts, groups=groups, secrets_dir=str(tmp_path / "secrets"))
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    return Deployment(Path("test.py"), settings, secrets_store.load(store, wanted_secrets(settings)), store)


def test_a_host_of_workers_only_renders_configs_synapses_checker_accepts(synapse_python, tmp_path):
    _check_workers(synapse_python, _scale(tmp_path), tmp_path, here="s2")


def test_each_host_reaches_the_others_by_their_internal_addresses(tmp_path):
    d = _scale(tmp_path)
    assert [(w.name, w.host, w.port) for w in synapse_workers.workers(d.settings)] == [
        ("event_persister-1", "s1", 8100), ("generic-1", "s2", 8100), ("generic-2", "s2", 8101)]  # fmt: skip
    main, workers_only = synapse.config(d, "s1"), synapse.config(d, "s2")
    assert [listener["bind_addresses"] for listener in main["listeners"]] == [["127.0.0.1", "10.0.0.1"]] * 2
    assert workers_only["listeners"] == []  # no main process there
    assert main["instance_map"] == {"main": {"host": "127.0.0.1", "port": 8008},
                                    "event_persister-1": {"host": "127.0.0.1", "port": 8100},
                                    "generic-1": {"host": "10.0.0.2", "port": 8100},
                                    "generic-2": {"host": "10.0.0.2", "port": 8101}}  # fmt: skip
    assert workers_only["instance_map"]["main"] == {"host": "10.0.0.1", "port": 8008}
    assert workers_only["instance_map"]["generic-1"] == {"host": "127.0.0.1", "port": 8100}
    assert (main["redis"]["host"], workers_only["redis"]["host"]) == ("127.0.0.1", "10.0.0.1")
    # Each Synapse host asks the MAS instance beside it; each MAS instance asks the main process.
    assert workers_only["matrix_authentication_service"]["endpoint"] == "http://127.0.0.1:8080/"
    assert mas.config(d, "s2")["matrix"]["endpoint"] == "http://10.0.0.1:8008/"
    assert mas.config(d, "s2")["database"]["host"] == "10.0.0.1"
    site = nginx.render_site(d, "s1")
    assert "upstream matrix_mas { server 127.0.0.1:8080 max_fails=0; server 10.0.0.2:8080 max_fails=0;" in site
    assert (
        "upstream matrix_synapse_generic {  server 10.0.0.2:8100 max_fails=0; server 10.0.0.2:8101 max_fails=0;" in site
    )
    assert "upstream matrix_synapse { server 127.0.0.1:8008;" in site
