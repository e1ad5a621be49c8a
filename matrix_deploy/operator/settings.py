"""The deployment's settings: read once from inventory and group data, checked, and frozen.

Each setting is checked by its declaration (options.py), then the checks that involve several settings run
(`together`). Every problem is collected and reported together, each naming the setting, the bad value and
what is expected, before any host is contacted.
"""

import difflib
import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from matrix_deploy.engine.addresses import resolve_literal
from matrix_deploy.operator.declare import internal_address
from matrix_deploy.operator.options import BY_NAME, OPTIONS, PREFIXES, REMOVED
from matrix_deploy.services.adoption.options import Source as AdoptSource
from matrix_deploy.services.delegation.options import (
    MAS_API_MIN_SYNAPSE,
    MSC3861_MAX_SYNAPSE,
    MSC3861_MIN_SYNAPSE,
    NATIVE_MIN_SYNAPSE,
)
from matrix_deploy.services.mas import options as mas_settings
from matrix_deploy.services.synapse import locks

ROLES = ("db", "mas", "synapse", "proxy")
SINGLE_INSTANCE_ROLES = ("db",)


class SettingsError(Exception):
    """One or more settings are wrong; `problems` lists each, ready to print."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class MasRelease:
    version: str
    sha256: str
    url: str | None  # fetched by the host
    file: Path | None  # uploaded from the operator's machine

    @property
    def archive_name(self) -> str:
        return f"mas-cli-{self.version}-{self.sha256[:12]}.tar.gz"


@dataclass(frozen=True)
class Placement:
    """Which inventory hosts run each role, and how the others reach them."""

    db: str
    mas: tuple[str, ...]  # MAS instances; the first runs MAS's migrations and config sync, once per change
    synapse: tuple[str, ...]  # the first runs Synapse's main process, the others workers only
    proxy: tuple[str, ...]
    addresses: dict[str, str] = field(hash=False)
    ssh_ports: dict[str, int] = field(hash=False, default_factory=dict)  # the inventory's ssh_port, where it sets one

    @property
    def synapse_main(self) -> str:
        return self.synapse[0]

    @property
    def mas_primary(self) -> str:
        return self.mas[0]

    def mas_for(self, client: str) -> str:
        """The MAS instance `client` (a Synapse host) asks: its own host's, else the first."""
        return client if client in self.mas else self.mas[0]

    def ssh_port(self, name: str, firewall_ssh_port: int | None) -> int:
        """The port host `name`'s SSH door keeps open: firewall_ssh_port, else the inventory's, else 22."""
        return firewall_ssh_port or self.ssh_ports.get(name, 22)

    def reach(self, client: str, server: str) -> str:
        """Address `client` uses to talk to `server`: loopback when they are the same host (a name is fine)."""
        return "127.0.0.1" if client == server else self.addresses[server]

    def endpoint(self, client: str, server: str, port: int) -> str:
        """host:port of `server` for `client`, with an IPv6 address in brackets (URLs, nginx upstreams)."""
        address = self.reach(client, server)
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def listen(self, server: str, clients: list[str], own_addresses=None) -> list[str]:
        """Addresses a service on `server` binds: loopback, plus its internal address for remote clients.

        Programs bind IP addresses: `own_addresses` turns the internal address (maybe a name) into the
        server's own addresses, as the server resolves it (host_state).
        """
        if not any(c != server for c in clients):
            return ["127.0.0.1"]
        return ["127.0.0.1", *(own_addresses or resolve_literal)(self.addresses[server])]

    def networks(self, hosts: list[str], resolve=None) -> list[str]:
        """The single-address networks (/32, or /128 for IPv6) of `hosts`' internal addresses.

        Programs that filter clients (MAS's trusted_proxies, pg_hba) take networks: `resolve` turns a
        name into addresses as the host doing the filtering resolves it (host_state).
        """
        found = set()
        for name in hosts:
            for address in (resolve or resolve_literal)(self.addresses[name]):
                ip = ipaddress.ip_address(address)
                found.add((ip.version, ip, f"{ip}/{ip.max_prefixlen}"))
        return [network for *_, network in sorted(found)]

    def roles_of(self, host: str) -> set[str]:
        return ({"db"} if self.db == host else set()) | {
            r for r in ("mas", "synapse", "proxy") if host in getattr(self, r)
        }


@dataclass(frozen=True)
class Settings:
    """The checked settings: one field per setting, of the same name (options.py), and where each role runs."""

    matrix_server_name: str
    matrix_public_url: str  # with a trailing slash
    mas_public_url: str
    auth_mode: str
    allow_auth_mode_downgrade: bool
    synapse_version: str
    synapse_port: int
    synapse_extra_config: dict[str, Any] = field(hash=False)
    synapse_federation_ca_certificates: tuple[Path, ...]
    # Per Synapse host (synapse group order): worker kind -> count (synapse_workers.KINDS); {} for none.
    synapse_workers: dict[str, dict[str, int]] = field(hash=False)
    synapse_worker_port: int
    synapse_metrics_port: int
    redis_port: int
    mas_version: str
    mas_release_url: str | None  # with the version filled in; None when mas_release_file is set
    mas_release_file: Path | None
    mas_release_sha256: str
    mas_port: int
    mas_internal_port: int
    mas_metrics_port: int
    mas_extra_config: dict[str, Any] = field(hash=False)
    admin_user: str | None
    mas_password_registration: bool
    mas_registration_token_required: bool
    mas_email_smtp_host: str | None
    mas_email_smtp_port: int | None
    mas_email_smtp_mode: str
    mas_email_smtp_username: str | None
    mas_email_from: str | None
    mas_upstream_providers: tuple[mas_settings.Provider, ...]
    postgres_port: int
    backup_dir: str
    backup_keep: int
    tls: str
    tls_certificate: Path | None
    tls_certificate_key: Path | None
    acme_directory_url: str
    acme_email: str | None
    acme_directory_ca: Path | None
    firewall: bool
    firewall_ssh_port: int | None
    firewall_metrics_scrapers: tuple[str, ...]  # IP addresses, networks or host names
    firewall_open_ports: tuple[int, ...]
    backup_repository: str | None  # restic's; None: no scheduled backups
    backup_time: str
    backup_keep_daily: int
    backup_keep_weekly: int
    adopt_synapse: AdoptSource | None  # the Synapse that already runs, to take over (services/adoption)
    adopt_accept_warnings: tuple[str, ...]
    secrets_dir: Path
    secrets_age_identity: Path | None  # the operator's age key: the store is (or becomes) <inventory>.yaml.age
    placement: Placement

    @property
    def mas_release(self) -> MasRelease:
        return MasRelease(self.mas_version, self.mas_release_sha256, self.mas_release_url, self.mas_release_file)

    @property
    def mas_email(self) -> mas_settings.Email | None:
        if self.mas_email_smtp_host is None:
            return None
        return mas_settings.Email(
            self.mas_email_smtp_host,
            self.mas_email_smtp_port,
            self.mas_email_smtp_mode,
            self.mas_email_smtp_username,
            self.mas_email_from,
        )

    @property
    def backups(self) -> bool:
        return self.backup_repository is not None

    @property
    def has_workers(self) -> bool:
        return any(self.synapse_workers.values())

    @property
    def mas_homeserver_kind(self) -> str:
        """MAS's matrix.kind for this Synapse: the legacy admin API before Synapse had the MAS API."""
        return "synapse" if version_tuple(self.synapse_version) >= MAS_API_MIN_SYNAPSE else "synapse_legacy"

    @property
    def public_host(self) -> str:
        return urlsplit(self.matrix_public_url).hostname

    @property
    def mas_public_host(self) -> str:
        return urlsplit(self.mas_public_url).hostname


DEPLOYMENT_WIDE = [option.name for option in OPTIONS if not option.per_host]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unknown_keys(data: dict[str, Any]) -> list[str]:
    problems = []
    for key in data:
        if key in REMOVED and data[key] is not None:
            problems.append(f"{key}: no longer a setting: {REMOVED[key]}; expected no {key}")
        elif key.startswith(PREFIXES) and key not in BY_NAME and key not in REMOVED:
            close = difflib.get_close_matches(key, BY_NAME, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{key}: unknown setting{hint}; expected one of the settings (README's Settings table)")
    return problems


def _placement(hosts: dict[str, dict[str, Any]], groups: dict[str, list[str]], problems: list[str]):
    chosen: dict[str, list[str]] = {}
    for role in ROLES:
        members = groups.get(role, [])
        if not members:
            problems.append(
                f"role {role}: no host is in the {role!r} group; expected exactly one host"
                + ("" if role in SINGLE_INSTANCE_ROLES else " or more")
            )
        elif role in SINGLE_INSTANCE_ROLES and len(members) > 1:
            problems.append(f"role {role}: {len(members)} hosts ({', '.join(members)}); expected exactly one host")
        chosen[role] = members
    addresses = {}
    for name, data in hosts.items():
        addresses[name] = data.get("internal_address") or name
        internal_address(f"internal_address of host {name}", addresses[name], problems)
    if any(not chosen[r] or (r in SINGLE_INSTANCE_ROLES and len(chosen[r]) != 1) for r in ROLES):
        return None
    ssh_ports = {name: data["ssh_port"] for name, data in hosts.items() if data.get("ssh_port") is not None}
    return Placement(
        chosen["db"][0], tuple(chosen["mas"]), tuple(chosen["synapse"]), tuple(chosen["proxy"]), addresses, ssh_ports
    )


def _workers(hosts: dict[str, dict[str, Any]], placement: Placement | None, problems: list[str]) -> dict:
    """Each Synapse host's workers (synapse_workers, per host), and the checks across hosts."""
    if placement is None:
        return {}
    several = len(placement.synapse) > 1
    found = {}
    for name in placement.synapse:
        key = f"host {name}: synapse_workers" if several else "synapse_workers"
        found[name] = BY_NAME["synapse_workers"].check(key, hosts[name].get("synapse_workers"), problems)
    with_kind = {
        kind: [h for h, counts in found.items() if counts.get(kind)] for kind in ("background", "media_repository")
    }
    if len(with_kind["background"]) > 1:
        problems.append(
            f"synapse_workers: a background worker on hosts {', '.join(with_kind['background'])}; "
            "expected one in the deployment (one instance runs Synapse's background tasks)"
        )
    if len(with_kind["media_repository"]) > 1:
        problems.append(
            f"synapse_workers: media_repository workers on hosts {', '.join(with_kind['media_repository'])}; "
            "expected them on one host (they share the media store, a directory of that host)"
        )
    for name in placement.synapse[1:]:
        if not found[name]:
            problems.append(
                f"host {name}: synapse_workers = {{}}: expected workers on it: only the first host of the synapse "
                f"group ({placement.synapse_main}) runs Synapse's main process, the others run workers"
            )
    return found


def together(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """The checks that involve several settings, on the values each option's check gave (None: refused or unset),
    one named check per concern, in this order.

    Fills in the values that default to others' (the public URLs, the release URL's version).
    """
    for check in TOGETHER:
        check(v, data, problems)


def _public_urls(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """The public URLs default to names under the server name; MAS's has a host name of its own."""
    server_name = v["matrix_server_name"]
    if server_name:
        v["matrix_public_url"] = v["matrix_public_url"] or f"https://matrix.{server_name}/"
        v["mas_public_url"] = v["mas_public_url"] or f"https://auth.{server_name}/"
    public_url, mas_public_url = v["matrix_public_url"], v["mas_public_url"]
    if public_url and mas_public_url and urlsplit(public_url).netloc == urlsplit(mas_public_url).netloc:
        problems.append(
            f"mas_public_url = {mas_public_url!r}: expected a host name of its own, not the one of matrix_public_url"
        )


def _synapse_version(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """Synapse's version against the delegation mode, then against the repository's locks."""
    auth_mode, synapse_version = v["auth_mode"], v["synapse_version"]
    if synapse_version and auth_mode == "native" and version_tuple(synapse_version) < NATIVE_MIN_SYNAPSE:
        expected = "1.136.0 or newer with auth_mode 'native' (matrix_authentication_service)"
        problems.append(f"synapse_version = {synapse_version!r}: expected {expected}")
    if synapse_version and auth_mode == "msc3861" and version_tuple(synapse_version) > MSC3861_MAX_SYNAPSE:
        expected = (
            "1.156.0 or older with auth_mode 'msc3861' (1.157.0 removed experimental_features.msc3861; "
            "1.156.0 is the newest that has it), or auth_mode 'native'"
        )
        problems.append(f"synapse_version = {synapse_version!r}: expected {expected}")
    if synapse_version and auth_mode == "msc3861" and version_tuple(synapse_version) < MSC3861_MIN_SYNAPSE:
        expected = (
            "1.125.0 or newer with auth_mode 'msc3861' (the first whose msc3861 section reads client_secret_path "
            "and admin_token_path: secrets stay in files)"
        )
        problems.append(f"synapse_version = {synapse_version!r}: expected {expected}")
    if synapse_version and not locks.path(synapse_version).is_file():
        expected = (
            f"a version with a lock in the repository ({', '.join(locks.versions())}); "
            f"make one with `make lock SYNAPSE={synapse_version}` and commit it"
        )
        problems.append(f"synapse_version = {synapse_version!r}: expected {expected}")


def _mas_release(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """MAS's release: the file, when set, wins over the URL and must be the one the sha256 pins."""
    release_file, sha = v["mas_release_file"], v["mas_release_sha256"]
    if data.get("mas_release_file") is not None:
        v["mas_release_url"] = None
    elif v["mas_release_url"] is None and data.get("mas_release_url") is None:
        problems.append("mas_release_url is not set: expected an http(s) URL of the MAS release tarball")
    elif v["mas_release_url"] and v["mas_version"]:
        v["mas_release_url"] = v["mas_release_url"].replace("{version}", v["mas_version"])
    if release_file and sha and sha256_of(release_file) != sha:
        problems.append(
            f"mas_release_file {release_file}: its sha256 is {sha256_of(release_file)}, but mas_release_sha256 = {sha}; "
            "expected the file the checksum was pinned for"
        )


def _ports(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """Each service's port is its own, and none is nginx's."""
    seen: dict[int, str] = {443: "nginx (https)", 80: "nginx (http)"}
    # The workers' listeners count up from synapse_worker_port and synapse_metrics_port + 1 on each host: ranges.
    workers = max((sum(counts.values()) for counts in v["synapse_workers"].values()), default=0)
    spans = {"synapse_worker_port": workers, "synapse_metrics_port": 1 + workers}
    for key in ("synapse_port", "mas_port", "mas_internal_port", "mas_metrics_port", "postgres_port", "synapse_worker_port",
                "synapse_metrics_port", "redis_port"):  # fmt: skip
        port = v[key]
        for n in range(spans.get(key, 1) if port else 0):
            if port + n in seen:
                what = f" (its ports run up to {port + spans[key] - 1}): {port + n} is" if n else ":"
                problems.append(f"{key} = {port}{what} already used by {seen[port + n]}; expected a port of its own")
                break
            seen[port + n] = key


def _tls(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """tls = "files" takes both files; the other modes none."""
    given = [k for k in ("tls_certificate", "tls_certificate_key") if data.get(k) is not None]
    if v["tls"] == "files" and len(given) != 2:
        problems.append(
            "tls_certificate and tls_certificate_key: expected both set with tls = 'files' (your certificate and key)"
        )
    elif v["tls"] in ("acme", "self-signed") and given:
        problems.append(
            f"{given[0]}: expected unset with tls = {v['tls']!r}; set tls = 'files' to use your own certificate"
        )


def _mas_email(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """MAS's email: the SMTP relay's host makes the other email settings mean something, and needs a sender."""
    if data.get("mas_email_smtp_host") is None:
        for key in ("mas_email_smtp_port", "mas_email_smtp_username", "mas_email_from"):
            if data.get(key) is not None:
                problems.append(f"{key} = {data[key]!r}: expected mas_email_smtp_host to be set too (the SMTP relay)")
        if v["mas_password_registration"]:
            # account.password_registration_email_required defaults to true in MAS 1.22: registering sends a code.
            problems.append(
                "mas_password_registration = True: expected email settings too (mas_email_smtp_host, mas_email_from): "
                "MAS asks for an email address at registration and sends it a code"
            )
    elif data.get("mas_email_from") is None:
        problems.append('mas_email_from is not set: expected the sender address, like "Example" <auth@example.org>')


def _ssh_port(hosts: dict[str, dict[str, Any]], v: dict[str, Any], problems: list[str]) -> None:
    """A firewall_ssh_port that is set must be the port the inventory connects to, where it says one, or the run
    would shut itself out (the fresh SSH check would roll it back, but better refused here). Unset, each host's
    door is the inventory's own port for it."""
    wanted = v["firewall_ssh_port"]
    if not v["firewall"] or wanted is None:
        return
    for name, data in hosts.items():
        given = data.get("ssh_port")
        if given is not None and given != wanted:
            problems.append(
                f"firewall_ssh_port = {wanted}: host {name} is reached on ssh_port {given}; expected the inventory's "
                f"SSH port (set firewall_ssh_port = {given})"
            )


def _backup(v: dict[str, Any], data: dict[str, Any], problems: list[str]) -> None:
    """Scheduled backups keep at least one."""
    daily, weekly = v["backup_keep_daily"], v["backup_keep_weekly"]
    if v["backup_repository"] and daily == 0 and weekly == 0:
        problems.append(
            "backup_keep_daily = 0 and backup_keep_weekly = 0: expected at least one backup kept "
            "(restic forget would remove every snapshot)"
        )


def _adoption(v: dict[str, Any], placement: Placement | None, problems: list[str]) -> None:
    """The deployment takes the old homeserver in on the host of its database, Synapse's main process and first MAS
    instance (syn2mas reads and writes there); the old Synapse runs on that host, or on a host of the inventory with
    no role (its database and media are relayed from there: adoption/relay.py). A host with no role is only ever
    that."""
    if placement is None:
        return
    source = v["adopt_synapse"]
    roleless = [h for h in placement.addresses if not placement.roles_of(h)]
    for name in roleless:
        if source is None or name != source.host:
            problems.append(
                f"host {name} is in no role group (db, mas, synapse, proxy): expected each host in one, or named as "
                "adopt_synapse.host (the old Synapse's host, which the deployment only reads from and stops)"
            )
    if source is None:
        return
    if source.host not in placement.addresses:
        problems.append(f"adopt_synapse.host = {source.host!r}: expected a host of the inventory")
        return
    target = placement.db
    where = {"synapse": placement.synapse_main, "mas": placement.mas_primary}
    elsewhere = [f"{role} on {h}" for role, h in where.items() if h != target]
    if source.host not in roleless and source.host != target:
        elsewhere.insert(
            0, f"adopt_synapse.host {source.host} has roles ({', '.join(sorted(placement.roles_of(source.host)))})"
        )
    if elsewhere:
        problems.append(
            f"adopt_synapse.host = {source.host!r}: expected the database, Synapse's main process and the first MAS "
            f"instance on one host (the adoption restores the old database and media there), and the old Synapse on "
            f"that host or on a host of the inventory with no role; not {', '.join(elsewhere)}. Adopt onto a "
            "single-host layout, then, once it is delegated, remove adopt_synapse (giving up the way back) and move "
            "roles out"
        )
    if v["auth_mode"] != "native":
        problems.append(
            f"adopt_synapse with auth_mode = {v['auth_mode']!r}: expected auth_mode 'native' (syn2mas moves a "
            "homeserver to MAS's native delegation)"
        )


# The cross-field checks, in the order their problems are reported. Each takes (values, raw data, problems).
TOGETHER = (_public_urls, _synapse_version, _mas_release, _ports, _tls, _mas_email, _backup)


def load(hosts: dict[str, dict[str, Any]], groups: dict[str, list[str]]) -> Settings:
    """Build the settings from each host's merged data and the role groups; raise SettingsError listing every problem."""
    problems: list[str] = []
    if not hosts:
        raise SettingsError(["the inventory has no hosts: put hosts in the db, mas, synapse and proxy groups"])
    names = list(hosts)
    first = hosts[names[0]]
    for name in names[1:]:
        for key in DEPLOYMENT_WIDE:
            if hosts[name].get(key) != first.get(key):
                problems.append(
                    f"{key} differs between hosts {names[0]} ({first.get(key)!r}) and {name} ({hosts[name].get(key)!r}): "
                    "expected one value for the whole deployment (set it in group data for all)"
                )
    for data in hosts.values():
        for problem in _unknown_keys(data):
            if problem not in problems:
                problems.append(problem)
    v = {key: BY_NAME[key].check(key, first.get(key), problems) for key in DEPLOYMENT_WIDE}
    placement = _placement(hosts, groups, problems)
    v["synapse_workers"] = _workers(hosts, placement, problems)
    together(v, first, problems)
    _ssh_port(hosts, v, problems)
    _adoption(v, placement, problems)
    if problems:
        raise SettingsError(problems)
    return Settings(**v, placement=placement)
