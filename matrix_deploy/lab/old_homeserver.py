"""The lab's old homeserver, for the adoption tests and `make bench` (adopt_synapse): a homeserver that already
runs on a lab host, built the way an operator would have installed Synapse with the matrix.org Debian package,
before matrix-deploy and MAS take it over.

The package's layout, with Synapse from PyPI (the repository's hash lock, `locks/synapse-<version>.txt`, installed as
matrix-deploy installs it): a system user `matrix-synapse`, the virtualenv `/opt/venvs/matrix-synapse`, the config in
`/etc/matrix-synapse` (`homeserver.yaml`, `conf.d/server_name.yaml` and `conf.d/report_stats.yaml` as the package's
debconf writes them, `log.yaml`, `homeserver.signing.key`), data in `/var/lib/matrix-synapse`, logs in
`/var/log/matrix-synapse`, and the package's unit `/lib/systemd/system/matrix-synapse.service`. Its database is
Debian's PostgreSQL (database `synapse` owned by `synapse_user`) or SQLite. Or (`layout=OWN`) the way an operator
installs Synapse with pip into a virtualenv of their own: `/srv/homeserver/{env,config,data,log}`, one config
file, the user and unit `homeserver`, the database `matrix` owned by `homeserver`.

- `build(host, ...)` installs and starts it on a fresh lab host (Debian 12 or 13) and waits for `/health`;
- `populate(old)` gives it users, a room with messages and an image, and a logged-in client, through its HTTP APIs;
- `fill(old, users, tokens)` bulk-inserts generated users, devices, tokens and emails into its PostgreSQL (benchmarks);
- `running(old)`, `stop(old)`, `start(old)`, `files_digest(host, layout)`, `login(old, ...)`, `api(old, ...)`,
  `psql(old, ...)`, `insert_external_id(old, ...)`: what the tests look at and do.

The first build of a lock on a Debian release makes the virtualenv with pip; it is then kept on this machine
(VENV_CACHE, a zstd tarball) and later builds unpack it instead: the same files, in seconds.

Secrets (the database password, the registration shared secret, the pepper...) travel to the host on stdin only and
land in files closed to other users; the dataclasses keep them out of their reprs.
"""

import asyncio
import base64
import copy
import hashlib
import hmac
import io
import json
import os
import secrets
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field

import yaml
from nio import AsyncClient, LoginResponse, RoomCreateResponse, RoomSendResponse, UploadResponse

from matrix_deploy.lab import LabHost
from matrix_deploy.lab.probe import sh, ssh, ssh_argv
from matrix_deploy.lab.system import CACHE_DIR
from matrix_deploy.services.synapse import locks


@dataclass(frozen=True)
class Layout:
    """Where an old homeserver's parts are: the package's (DEBIAN), or an operator's own virtualenv (OWN)."""

    venv: str
    etc: str  # its config directory: homeserver.yaml, log.yaml, the signing key
    conf_d: bool  # the package's conf.d/ (server_name.yaml, report_stats.yaml), a second --config-path
    data: str
    log_dir: str
    user: str
    unit: str
    unit_file: str
    db_name: str
    db_user: str

    @property
    def config(self) -> str:
        return f"{self.etc}/homeserver.yaml"

    @property
    def config_paths(self) -> tuple[str, ...]:
        """Its --config-paths, as its unit passes them (adopt_synapse.config)."""
        return (self.config, f"{self.etc}/conf.d/") if self.conf_d else (self.config,)

    @property
    def signing_key(self) -> str:
        return f"{self.etc}/homeserver.signing.key"

    @property
    def media(self) -> str:
        return f"{self.data}/media"

    @property
    def digest_roots(self) -> tuple[str, ...]:
        """What files_digest() covers: everything the package (or the operator) and Synapse put on the host."""
        return (self.etc, self.data, self.venv)


DEBIAN = Layout(
    venv="/opt/venvs/matrix-synapse", etc="/etc/matrix-synapse", conf_d=True, data="/var/lib/matrix-synapse",
    log_dir="/var/log/matrix-synapse", user="matrix-synapse", unit="matrix-synapse",
    unit_file="/lib/systemd/system/matrix-synapse.service", db_name="synapse", db_user="synapse_user",
)  # fmt: skip
# A Synapse an operator installed with pip into a virtualenv of their own: one config file, a unit of their own,
# and a database that is not named synapse (the deployment's copy is made beside it, nothing renamed).
OWN = Layout(
    venv="/srv/homeserver/env", etc="/srv/homeserver/config", conf_d=False, data="/srv/homeserver/data",
    log_dir="/srv/homeserver/log", user="homeserver", unit="homeserver",
    unit_file="/etc/systemd/system/homeserver.service", db_name="matrix", db_user="homeserver",
)  # fmt: skip
PORT = 8008
LOCK_ON_HOST = "/root/old-homeserver-synapse.lock"
# Virtualenvs built here before, kept on this machine (zstd tarballs of a layout's virtualenv): per lock and Debian
# release (its Python), INSTALL's recipe and the virtualenv's path.
VENV_CACHE = CACHE_DIR / "old-homeserver-venvs"
INSTALL_LOG = "/root/old-homeserver-install.log"
PIP_LOG = "/root/old-homeserver-pip.log"

# A 1x1 PNG: the image alice sends.
IMAGE = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
ROOM_NAME = "from the old homeserver"
TEXTS = ("first words on the old homeserver", "a second message", "ünïcödé and emoji 🎉 survive too")
ALICE_EMAIL = "alice@example.org"
EXTERNAL_ID = ("oidc-lab", "alice-sub")  # (auth_provider, external_id): an OIDC provider with idp_id `lab`


@dataclass(frozen=True)
class Old:
    """An old homeserver built on a lab host: where it answers, and the secrets in its config."""

    host: LabHost
    server_name: str
    synapse_version: str
    database: str  # "postgres" or "sqlite"
    config: dict = field(repr=False)  # homeserver.yaml as written (it holds the secrets)
    registration_shared_secret: str = field(repr=False)
    macaroon_secret_key: str = field(repr=False)
    form_secret: str = field(repr=False)
    pepper: str = field(repr=False)
    db_password: str | None = field(default=None, repr=False)  # synapse_user's (PostgreSQL only)
    build_seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # seconds from build()'s start at which each step ended
    layout: Layout = DEBIAN

    @property
    def url(self) -> str:
        """Synapse's listener, from this machine: http://<lab host>:8008."""
        return f"http://{self.host.address}:{PORT}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"


@dataclass(frozen=True)
class User:
    localpart: str
    user_id: str
    password: str = field(repr=False)
    admin: bool = False
    deactivated: bool = False
    email: str | None = None


@dataclass(frozen=True)
class Population:
    """What populate() made on the old homeserver, to be found again after the adoption."""

    users: dict[str, User]  # by localpart: admin, alice, bob
    admin_token: str = field(repr=False)  # the admin's, from its shared-secret registration
    room_id: str = ""
    room_name: str = ROOM_NAME
    texts: tuple[str, ...] = TEXTS
    event_ids: tuple[str, ...] = ()  # the texts' events, in order
    image_mxc: str = ""
    image: bytes = field(default=IMAGE, repr=False)
    image_event_id: str = ""
    signing_key_id: str = ""  # "ed25519:a_XXXX", from GET /_matrix/key/v2/server
    signing_public_key: str = ""  # its unpadded base64 public key
    alice_token: str = field(default="", repr=False)  # alice's kept session: never logged out
    alice_device: str = ""
    external_id: tuple[str, str] | None = None  # alice's user_external_ids row, when asked for


@dataclass(frozen=True)
class Filled:
    """What fill() inserted: `users` generated users (localparts `bench-<n>`) sharing one password, `tokens` tokens."""

    users: int
    tokens: int
    password: str = field(repr=False)
    seconds: float = 0.0


def _secret(n: int = 32) -> str:
    return secrets.token_urlsafe(n)


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`: mappings merge key by key, anything else replaces; a None value removes the key."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _log_config(layout: Layout) -> str:
    """The package's log.yaml: a rotating file in the log directory, warnings on the console (the journal)."""
    return yaml.safe_dump(
        {
            "version": 1,
            "formatters": {
                "precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}
            },
            "handlers": {
                "file": {
                    "class": "logging.handlers.RotatingFileHandler",
                    "formatter": "precise",
                    "filename": f"{layout.log_dir}/homeserver.log",
                    "maxBytes": 104857600,
                    "backupCount": 10,
                    "encoding": "utf8",
                },
                "console": {"class": "logging.StreamHandler", "formatter": "precise", "level": "WARN"},
            },
            "loggers": {"synapse": {"level": "INFO"}, "synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file", "console"]},
            "disable_existing_loggers": False,
        },
        sort_keys=False,
    )


def _server_name_yaml(server_name: str) -> str:
    """conf.d/server_name.yaml as the package's postinst writes it from debconf."""
    return (
        "# This file is autogenerated, and will be recreated on upgrade if it is deleted.\n"
        "# Any changes you make will be preserved.\n\n"
        "# The domain name of the server, with optional explicit port.\n"
        "# This is used by remote servers to connect to this server,\n"
        "# e.g. matrix.org, localhost:8080, etc.\n"
        "# This is also the last part of your UserID.\n#\n"
        f"server_name: {server_name}\n"
    )


REPORT_STATS_YAML = (
    "# This file is autogenerated, and will be recreated on upgrade if it is deleted.\n"
    "# Any changes you make will be preserved.\n\n"
    "# Whether to report homeserver usage statistics.\n"
    "report_stats: false\n"
)

# The package's unit (debian/matrix-synapse.service), as it ships in /lib/systemd/system; the same for OWN.
UNIT_TEXT = """[Unit]
Description=Synapse Matrix homeserver
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User={user}
WorkingDirectory={data}
EnvironmentFile=-/etc/default/matrix-synapse
ExecStartPre={venv}/bin/python -m synapse.app.homeserver {paths} --generate-keys
ExecStart={venv}/bin/python -m synapse.app.homeserver {paths}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=3
SyslogIdentifier={unit}

[Install]
WantedBy=multi-user.target
"""

DEFAULT_FILE = "# Specify environment variables used when running Synapse\n# SYNAPSE_CACHE_FACTOR=0.5 (default)\n"

# Packages, the user and the package's directories. Synapse's virtualenv is pip's, from the lock, built in the
# background once python3-venv is in, while PostgreSQL installs, and compiled on every core; unless build() brought it
# from its cache (what an earlier build made of the same lock on the same Debian release). dpkg skips its fsyncs (a
# lab host is thrown away, never crashed). Nothing secret in it.
INSTALL = """set -e
export DEBIAN_FRONTEND=noninteractive
exec 3>&1 >{log} 2>&1
mark() {{ echo "$1 $(date +%s.%N)" >&3; }}
apt="apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io"
packages=python3-venv
if [ {postgres} = yes ]; then packages="$packages postgresql"; fi
apt-get update -q
pip=
if [ ! -e {venv}/bin/python ]; then
    $apt python3-venv
    mark venv-package
    (
        set -e
        python3 -m venv {venv}
        {venv}/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary :all: \\
            --no-compile -r {lock}
        mark pip-installed
        {venv}/bin/python -m compileall -q -j 0 {venv}/lib
        mark compiled
    ) > {pip_log} 2>&1 &
    pip=$!
fi
$apt $packages
mark packages
useradd --system --user-group --home-dir {data} --no-create-home --shell /usr/sbin/nologin {user}
for dir in {data} {log_dir} {etc}; do install -d -o {user} -g nogroup -m 0755 $dir; done
if [ {conf_d} = yes ]; then install -d -o root -g root -m 0755 {etc}/conf.d; fi
if [ -n "$pip" ] && ! wait $pip; then tail -40 {pip_log} >&3; exit 1; fi
if [ {postgres} = yes ]; then
    for i in $(seq 120); do pg_isready -q && break; sleep 0.5; done
    pg_isready
fi
"""

# The config files, each with its owner and mode before it holds anything, from JSON on stdin (path: [content,
# owner, group, mode]); then the signing key, as the package's postinst makes it: Synapse's --generate-keys, run as
# the user (who owns /etc/matrix-synapse, as the package's dpkg-statoverride makes it).
WRITE_FILES = """
import json, os, pwd, grp, sys
for path, (content, owner, group, mode) in json.load(sys.stdin).items():
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchown(fd, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
    os.fchmod(fd, int(mode, 8))
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.rename(path + ".new", path)
"""

# The package's listener, bound to every address: tests on this machine reach it at http://<lab host>:8008.
LISTENER = {"port": PORT, "tls": False, "type": "http", "x_forwarded": True, "bind_addresses": ["0.0.0.0"],
            "resources": [{"names": ["client", "federation"], "compress": False}]}  # fmt: skip

# The database as NOTES.md says Synapse wants it; the password comes in on stdin with the statements.
CREATE_DATABASE = """\\set ON_ERROR_STOP on
CREATE ROLE {user} LOGIN PASSWORD '{password}';
CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0 OWNER {user};
"""


def _get(url: str, token: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    return _request("GET", url, None, token, timeout)


def _request(method: str, url: str, body, token: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One HTTP request straight to the old Synapse (no proxy, whatever the environment says)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def api(old: Old, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
    """A JSON request to the old Synapse's client listener; (status, decoded body)."""
    status, raw = _request(method, old.url + path, body, token)
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"raw": raw.decode(errors="replace")}


def wait_healthy(old: Old, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _get(old.url + "/health", timeout=5)
            if status == 200 and body.strip() == b"OK":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            journal = ssh(old.host, f"journalctl -u {old.layout.unit} --no-pager -n 60").stdout
            raise AssertionError(f"the old Synapse on {old.host.name} does not answer /health: {journal}")
        time.sleep(0.5)


def build(
    host: LabHost,
    server_name: str = "lab.test",
    synapse_version: str = "1.162.0",
    *,
    database: str = "postgres",
    extra_config: dict | None = None,
    layout: Layout = DEBIAN,
) -> Old:
    """Install, configure and start an old homeserver on a fresh lab host, as the matrix.org package would have
    (or, with layout OWN, an operator with pip); returns once it answers /health from this machine.

    `extra_config` is deep-merged over homeserver.yaml (deep_merge: None removes a key); a `server_name` in it goes
    to conf.d/server_name.yaml instead (where the package keeps it), and wins over `server_name`."""
    if database not in ("postgres", "sqlite"):
        raise ValueError(f"database {database!r}: postgres or sqlite")
    started = time.time()
    timings = {}

    def mark(step: str, at: float | None = None) -> None:
        timings[step] = round((at or time.time()) - started, 1)

    extra = dict(extra_config or {})
    server_name = extra.pop("server_name", server_name)
    postgres = database == "postgres"
    db_password = _secret() if postgres else None
    shared, macaroon, form, pepper = _secret(), _secret(), _secret(), _secret(24)
    if postgres:
        db = {"name": "psycopg2", "args": {"user": layout.db_user, "password": db_password, "dbname": layout.db_name,
                                           "host": "localhost", "cp_min": 5, "cp_max": 10}}  # fmt: skip
    else:
        db = {"name": "sqlite3", "args": {"database": f"{layout.data}/homeserver.db"}}
    config = {
        "listeners": [LISTENER],
        "database": db,
        "log_config": f"{layout.etc}/log.yaml",
        "media_store_path": layout.media,
        "signing_key_path": layout.signing_key,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "registration_shared_secret": shared,
        "macaroon_secret_key": macaroon,
        "form_secret": form,
        "password_config": {"enabled": True, "pepper": pepper},
        "enable_registration": False,
        "report_stats": False,
    }
    if not layout.conf_d:  # one file: what the package keeps in conf.d is in it
        config = {"server_name": server_name, **config}
    config = deep_merge(config, extra)

    lock = locks.path(synapse_version).read_text()
    recipe = hashlib.sha256((lock + INSTALL + layout.venv).encode()).hexdigest()[:16]
    cache = VENV_CACHE / f"synapse-{synapse_version}-debian{host.release}-{recipe}.tar.zst"
    sh(host, f"umask 077 && cat > {LOCK_ON_HOST}", input=lock)
    if cache.is_file():
        _push_virtualenv(host, cache)
        mark("virtualenv-from-cache")
    install = INSTALL.format(log=INSTALL_LOG, venv=layout.venv, lock=LOCK_ON_HOST, pip_log=PIP_LOG, data=layout.data,
                             log_dir=layout.log_dir, etc=layout.etc, user=layout.user,
                             conf_d="yes" if layout.conf_d else "no", postgres="yes" if postgres else "no")  # fmt: skip
    result = ssh(host, "sh -s", input=install, timeout=900)
    if result.returncode != 0:
        log = ssh(host, f"tail -40 {INSTALL_LOG}").stdout
        raise AssertionError(f"installing the old homeserver on {host.name} failed: {result.stdout}{log}")
    for line in result.stdout.splitlines():  # the install's marks: "<step> <epoch seconds>" (one clock: nspawn)
        step, _, at = line.partition(" ")
        mark(step, float(at))
    if not cache.is_file():
        _pull_virtualenv(host, cache, layout.venv)
        mark("virtualenv-cached")
    sh(host, f"rm -f {LOCK_ON_HOST}")
    mark("installed")
    if postgres:
        sh(host, "cd / && runuser -u postgres -- psql -X -q -f -",
           input=CREATE_DATABASE.format(user=layout.db_user, password=db_password, name=layout.db_name))  # fmt: skip
    paths = " ".join(f"--config-path={p}" for p in layout.config_paths)
    unit = UNIT_TEXT.format(user=layout.user, data=layout.data, venv=layout.venv, paths=paths, unit=layout.unit)
    files = {
        layout.config: [yaml.safe_dump(config, sort_keys=False), "root", layout.user, "0640"],
        f"{layout.etc}/log.yaml": [_log_config(layout), "root", "root", "0644"],
        layout.unit_file: [unit, "root", "root", "0644"],
    }
    if layout.conf_d:
        files |= {
            f"{layout.etc}/conf.d/server_name.yaml": [_server_name_yaml(server_name), "root", "root", "0644"],
            f"{layout.etc}/conf.d/report_stats.yaml": [REPORT_STATS_YAML, "root", "root", "0644"],
            "/etc/default/matrix-synapse": [DEFAULT_FILE, "root", "root", "0644"],
        }
    sh(host, f"python3 -c {_quote(WRITE_FILES)} && cd / && runuser -u {layout.user} -- {layout.venv}/bin/python -m "
             f"synapse.app.homeserver {paths} --generate-keys && chmod 0600 {layout.signing_key}",
       input=json.dumps(files))  # fmt: skip
    mark("configured")
    started_unit = ssh(host, f"systemctl daemon-reload && systemctl enable --now {layout.unit}", timeout=300)
    old = Old(host, server_name, synapse_version, database, config, shared, macaroon, form, pepper, db_password,
              layout=layout)  # fmt: skip
    if started_unit.returncode != 0:
        log = f"{layout.log_dir}/homeserver.log"
        journal = ssh(host, f"journalctl -u {layout.unit} --no-pager -n 80; tail -40 {log}").stdout
        raise AssertionError(f"the old Synapse did not start on {host.name}: {started_unit.stderr}{journal}")
    mark("started")
    wait_healthy(old)
    mark("healthy")
    return Old(**{**old.__dict__, "build_seconds": timings["healthy"], "timings": timings})


def _push_virtualenv(host: LabHost, cache) -> None:
    """A cached virtualenv onto the host where it was made, as it was (owners, modes, times: .pyc files stay valid)."""
    with subprocess.Popen(["zstd", "-q", "-d", "-c", str(cache)], stdout=subprocess.PIPE) as unzstd:
        subprocess.run(ssh_argv(host, "tar -C / -xf -"), stdin=unzstd.stdout, check=True, timeout=300)
    assert unzstd.returncode == 0, f"zstd -d {cache} exited {unzstd.returncode}"


def _pull_virtualenv(host: LabHost, cache, venv: str) -> None:
    """The host's freshly built virtualenv into the cache, whole or not at all (another build may be filling it)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".incoming-")
    os.close(fd)
    try:
        with subprocess.Popen(ssh_argv(host, f"tar -C / -cf - {venv.lstrip('/')}"), stdout=subprocess.PIPE) as tar:
            subprocess.run(["zstd", "-q", "-f", "-T0", "-o", tmp], stdin=tar.stdout, check=True, timeout=300)
        assert tar.returncode == 0, f"tar of {venv} on {host.name} exited {tar.returncode}"
        os.rename(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def running(old: Old) -> bool:
    return ssh(old.host, f"systemctl is-active --quiet {old.layout.unit}").returncode == 0


def stop(old: Old) -> None:
    sh(old.host, f"systemctl stop {old.layout.unit}")


def start(old: Old) -> None:
    sh(old.host, f"systemctl start {old.layout.unit}", timeout=300)
    wait_healthy(old)


# Every file, directory and link under the roots: path, type, mode, owner, group, and the content's (or the link's
# target's) sha256; one sha256 of it all. Run by python3 on the host, as root.
DIGEST = """
import hashlib, os, stat, sys
total = hashlib.sha256()
for root in sys.argv[1:]:
    entries = [root] if os.path.lexists(root) else []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        entries += [os.path.join(top, n) for n in sorted(dirs + files)]
    for path in sorted(entries):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            what = h.hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(path)
        else:
            what = ""
        total.update(f"{path}\\0{st.st_mode:o}\\0{st.st_uid}:{st.st_gid}\\0{what}\\n".encode())
print(total.hexdigest())
"""


def files_digest(host: LabHost, layout: Layout = DEBIAN) -> str:
    """One sha256 of every path's type, mode, owner and content under the old homeserver's config, data and
    virtualenv directories (/etc/matrix-synapse, /var/lib/matrix-synapse, /opt/venvs/matrix-synapse): equal
    digests, untouched files."""
    return sh(host, f"python3 - {' '.join(layout.digest_roots)}", input=DIGEST, timeout=600).strip()


def psql(old: Old, sql: str, user: str = "postgres") -> str:
    """SQL (on stdin: `$` in event IDs survives) against the old database as the postgres superuser; -At output."""
    assert old.database == "postgres", "psql: the old homeserver runs on SQLite"
    database = old.layout.db_name
    return sh(old.host, f"cd / && runuser -u {user} -- psql -X -At -v ON_ERROR_STOP=1 -d {database} -f -", input=sql)


def _register_admin(old: Old, localpart: str, password: str) -> dict:
    """Synapse's shared-secret registration (/_synapse/admin/v1/register), as `register_new_matrix_user` does it."""
    status, nonce = api(old, "GET", "/_synapse/admin/v1/register")
    assert status == 200, nonce
    mac = hmac.new(old.registration_shared_secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce["nonce"], localpart, password):
        mac.update(part.encode() + b"\x00")
    mac.update(b"admin")
    body = {"nonce": nonce["nonce"], "username": localpart, "password": password, "admin": True,
            "mac": mac.hexdigest()}  # fmt: skip
    status, registered = api(old, "POST", "/_synapse/admin/v1/register", body)
    assert status == 200, registered
    return registered


def login(old: Old, localpart: str, password: str, device_name: str = "a test", patience: float = 90):
    """A password login straight to the old Synapse, waiting out its login rate limit (rc_login: a burst of 3);
    returns (status, body) of the last answer."""
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": password, "initial_device_display_name": device_name}  # fmt: skip
    deadline = time.monotonic() + patience
    while True:
        status, answer = api(old, "POST", "/_matrix/client/v3/login", body)
        if status != 429 or time.monotonic() > deadline:
            return status, answer
        time.sleep(min(answer.get("retry_after_ms", 2000) / 1000 + 0.1, 10))


async def _alice_speaks(old: Old, password: str) -> dict:
    client = AsyncClient(old.url, old.user_id("alice"))
    try:
        session = None
        for _ in range(10):
            session = await client.login(password, device_name="kept from the old homeserver")
            if isinstance(session, LoginResponse):
                break
            assert getattr(session, "status_code", "") == "M_LIMIT_EXCEEDED", session
            await asyncio.sleep((getattr(session, "retry_after_ms", None) or 3000) / 1000)
        assert isinstance(session, LoginResponse), session
        room = await client.room_create(name=ROOM_NAME)
        assert isinstance(room, RoomCreateResponse), room
        events = []
        for text in TEXTS:
            sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": text})
            assert isinstance(sent, RoomSendResponse), sent
            events.append(sent.event_id)
        uploaded, _ = await client.upload(io.BytesIO(IMAGE), content_type="image/png", filename="pixel.png",
                                          filesize=len(IMAGE))  # fmt: skip
        assert isinstance(uploaded, UploadResponse), uploaded
        image = await client.room_send(room.room_id, "m.room.message", {
            "msgtype": "m.image", "body": "pixel.png", "url": uploaded.content_uri,
            "info": {"mimetype": "image/png", "size": len(IMAGE), "w": 1, "h": 1},
        })  # fmt: skip
        assert isinstance(image, RoomSendResponse), image
        return {"room_id": room.room_id, "event_ids": tuple(events), "image_mxc": uploaded.content_uri,
                "image_event_id": image.event_id, "alice_token": session.access_token,
                "alice_device": session.device_id}  # fmt: skip
    finally:
        await client.close()  # the session's HTTP connections only: the login is kept, never logged out


def populate(old: Old, external_id: bool = False) -> Population:
    """Users (`admin` a server admin, `alice` with an email, `bob` deactivated), alice's room with TEXTS and an image,
    and alice's logged-in session (kept), all through the old Synapse's HTTP APIs. `external_id`: also alice's
    user_external_ids row EXTERNAL_ID (valid for syn2mas only with an OIDC provider `lab` in the config)."""
    passwords = {name: _secret(12) for name in ("admin", "alice", "bob")}
    admin = _register_admin(old, "admin", passwords["admin"])
    token = admin["access_token"]
    for name, extra in (("alice", {"threepids": [{"medium": "email", "address": ALICE_EMAIL}]}), ("bob", {})):
        status, made = api(old, "PUT", f"/_synapse/admin/v2/users/{old.user_id(name)}",
                           {"password": passwords[name], "displayname": name.title(), **extra}, token)  # fmt: skip
        assert status == 201, made
    status, gone = api(old, "POST", f"/_synapse/admin/v1/deactivate/{old.user_id('bob')}", {"erase": False}, token)
    assert status == 200, gone
    spoken = asyncio.run(_alice_speaks(old, passwords["alice"]))
    status, keys = api(old, "GET", "/_matrix/key/v2/server")
    assert status == 200, keys
    ((key_id, key),) = keys["verify_keys"].items()
    if external_id:
        insert_external_id(old, "alice", *EXTERNAL_ID)
    users = {
        "admin": User("admin", old.user_id("admin"), passwords["admin"], admin=True),
        "alice": User("alice", old.user_id("alice"), passwords["alice"], email=ALICE_EMAIL),
        "bob": User("bob", old.user_id("bob"), passwords["bob"], deactivated=True),
    }
    return Population(users, token, signing_key_id=key_id, signing_public_key=key["key"],
                      external_id=EXTERNAL_ID if external_id else None, **spoken)  # fmt: skip


def insert_external_id(old: Old, localpart: str, auth_provider: str, external_id: str) -> None:
    """A user_external_ids row (what an SSO login leaves), straight into the old database."""
    row = (auth_provider, external_id, old.user_id(localpart))
    if old.database == "postgres":
        values = ", ".join("'" + v.replace("'", "''") + "'" for v in row)
        psql(old, f"INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ({values});")
    else:
        script = (
            "import json, sqlite3, sys\n"
            f"db = sqlite3.connect({old.layout.data + '/homeserver.db'!r})\n"
            "db.execute('INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES (?, ?, ?)',"
            " json.loads(sys.stdin.readline()))\n"
            "db.commit()\n"
        )
        python = f"{old.layout.venv}/bin/python"
        sh(old.host, f"cd / && runuser -u {old.layout.user} -- {python} -c {_quote(script)}", input=json.dumps(row))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _base62(number: int, width: int) -> str:
    out = ""
    while number:
        number, digit = divmod(number, 62)
        out = BASE62[digit] + out
    return out.rjust(width, "0")


def synapse_token(localpart: str) -> str:
    """An access token in Synapse's format: syt_<base64 localpart>_<20 random letters>_<base62 crc32 of the rest>."""
    b64 = base64.urlsafe_b64encode(localpart.encode()).decode().rstrip("=")
    base = f"syt_{b64}_{''.join(secrets.choice(string.ascii_letters) for _ in range(20))}"
    return f"{base}_{_base62(zlib.crc32(base.encode()), 6)}"


def _copy(table: str, columns: list[str], rows) -> str:
    """A COPY ... FROM STDIN block (text format) for psql's script; values hold no tab, newline or backslash."""
    lines = ["\t".join("\\N" if v is None else str(v) for v in row) for row in rows]
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN;\n" + "\n".join(lines) + "\n\\.\n"


def fill(old: Old, users: int = 10_000, tokens: int = 50_000) -> Filled:
    """`users` generated users (`bench-00001`...: a profile, an email, one bcrypt hash of one password for all of
    them), and `tokens` access tokens spread over them, each on a device of its own, bulk-inserted into the old
    PostgreSQL database (COPY through psql as postgres, in one transaction) in Synapse 1.162's schema."""
    started = time.monotonic()
    password = _secret(12)
    # One hash, made by the old Synapse's own bcrypt with its pepper, as Synapse would (password + pepper).
    hashed = sh(old.host, f"cd / && {old.layout.venv}/bin/python -c 'import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.read()"
                          ".encode(), bcrypt.gensalt(12)).decode())'", input=password + old.pepper).strip()  # fmt: skip
    now_s, now_ms = int(time.time()), int(time.time() * 1000)
    # Synapse hands out access token IDs from the greatest at its start (IdGenerator): these begin well past it.
    first_id = int(psql(old, "SELECT coalesce(max(id), 0) FROM access_tokens;").strip()) + 1_000_000
    names = [f"bench-{n:05d}" for n in range(1, users + 1)]
    ids = [old.user_id(n) for n in names]
    script = "\\set ON_ERROR_STOP on\nBEGIN;\n"
    script += _copy("users", ["name", "password_hash", "creation_ts", "admin", "is_guest", "deactivated",
                              "approved", "locked", "suspended"],
                    ((u, hashed, now_s, 0, 0, 0, "t", "f", "f") for u in ids))  # fmt: skip
    script += _copy("profiles", ["user_id", "full_user_id", "displayname"],
                    ((n, u, f"Bench {n[6:]}") for n, u in zip(names, ids, strict=True)))  # fmt: skip
    script += _copy("user_threepids", ["user_id", "medium", "address", "validated_at", "added_at"],
                    ((u, "email", f"{n}@example.org", now_ms, now_ms) for n, u in zip(names, ids, strict=True)))  # fmt: skip
    owners = [(names[i % users], ids[i % users]) for i in range(tokens)]
    devices = [f"BENCH{i:07d}" for i in range(tokens)]
    script += _copy("devices", ["user_id", "device_id", "display_name", "last_seen", "ip", "user_agent", "hidden"],
                    ((u, d, "bench device", now_ms, "10.0.0.1", "bench", "f")
                     for (_, u), d in zip(owners, devices, strict=True)))  # fmt: skip
    script += _copy("access_tokens", ["id", "user_id", "device_id", "token", "valid_until_ms", "last_validated",
                                      "used"],
                    ((first_id + i, u, d, synapse_token(n), None, now_ms, "f")
                     for i, ((n, u), d) in enumerate(zip(owners, devices, strict=True))))  # fmt: skip
    script += "COMMIT;\nANALYZE users; ANALYZE access_tokens; ANALYZE devices; ANALYZE user_threepids;\n"
    psql(old, script)
    return Filled(users, tokens, password, round(time.monotonic() - started, 1))
