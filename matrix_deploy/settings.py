"""The deployment's settings: read once from inventory and group data, checked, and frozen.

Every problem is collected and reported together, each naming the setting, the bad value and
what is expected, before any host is contacted.
"""

import difflib
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from . import locks, mas_settings

ROLES = ("db", "mas", "synapse", "proxy")
SINGLE_INSTANCE_ROLES = ("db", "mas", "synapse")
AUTH_MODES = ("native", "msc3861")
TLS_MODES = ("acme", "files", "self-signed")
# The first Synapse with the `matrix_authentication_service` section.
NATIVE_MIN_SYNAPSE = (1, 136, 0)
# The newest Synapse that still has `experimental_features.msc3861` (1.157.0 removed it).
MSC3861_MAX_SYNAPSE = (1, 156, 0)
# The first Synapse whose msc3861 section reads `client_secret_path` and `admin_token_path` (files, not values).
MSC3861_MIN_SYNAPSE = (1, 125, 0)
# The first Synapse with the MAS API (/_synapse/mas) that MAS's `synapse` kind calls.
MAS_API_MIN_SYNAPSE = (1, 135, 0)
# The client MAS keeps for Synapse in msc3861 mode (a valid ULID).
MSC3861_CLIENT_ID = "0000000000000000000SYNAPSE"
# The MAS admin API client the deploy creates admin_user with (a ULID, like every MAS client id).
MAS_ADMIN_CLIENT_ID = "000000000000000000MDADM1N0"
# Settings Synapse refuses beside MAS, or that this deployment renders itself.
SYNAPSE_FORBIDDEN = {
    "enable_registration": "registration is handled by MAS",
    "enable_registration_without_verification": "registration is handled by MAS",
    "registration_requires_3pid": "registration is handled by MAS",
    "password_config": "passwords are handled by MAS",
    "enable_3pid_changes": "3PID changes are handled by MAS",
    "enable_registration_captcha": "captcha is handled by MAS",
    "recaptcha_public_key": "captcha is handled by MAS",
    "recaptcha_private_key": "captcha is handled by MAS",
    "user_consent": "Synapse refuses user_consent beside MAS",
    "oidc_providers": "SSO is configured in MAS (upstream_oauth2)",
    "oidc_config": "SSO is configured in MAS (upstream_oauth2)",
    "saml2_config": "SSO is configured in MAS",
    "cas_config": "SSO is configured in MAS",
    "jwt_config": "SSO is configured in MAS",
    "sso": "SSO is configured in MAS",
    "password_providers": "authentication is handled by MAS",
    "login_via_existing_session": "Synapse refuses it beside MAS",
    "session_lifetime": "token lifetimes are handled by MAS",
    "refresh_access_token_lifetime": "token lifetimes are handled by MAS",
    "refreshable_access_token_lifetime": "token lifetimes are handled by MAS",
    "nonrefreshable_access_token_lifetime": "token lifetimes are handled by MAS",
    "experimental_features": "msc3861 is chosen with the auth_mode setting",
    "matrix_authentication_service": "it is rendered from the MAS settings",
    "server_name": "set matrix_server_name instead",
    "public_baseurl": "set matrix_public_url instead",
    "database": "the database is managed by this deployment",
    "listeners": "set synapse_port instead",
    "signing_key_path": "the signing key comes from the secrets store",
    "macaroon_secret_key": "it comes from the secrets store",
    "form_secret": "it comes from the secrets store",
    "macaroon_secret_key_path": "it comes from the secrets store",
    "form_secret_path": "it comes from the secrets store",
    "registration_shared_secret": "registration is handled by MAS",
    "federation_custom_ca_list": "set synapse_federation_ca_certificates instead",
}
MAS_FORBIDDEN = {
    "matrix": "it is rendered from the Synapse settings and the shared secret",
    "database": "the database is managed by this deployment",
    "secrets": "the secrets come from the secrets store",
    "email": "set the mas_email_* settings instead (the SMTP password comes from the secrets store)",
    "upstream_oauth2": "set mas_upstream_providers instead (client secrets come from the secrets store)",
}
# Keys of MAS's `account` section rendered from settings.
MAS_ACCOUNT_FORBIDDEN = {
    "password_registration_enabled": "set mas_password_registration instead",
    "password_registration_token_required": "set mas_registration_token_required instead",
    "registration_token_required": "set mas_registration_token_required instead",
}
HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
OUR_PREFIXES = ("acme_", "matrix_", "mas_", "synapse_", "postgres_", "tls_", "admin_", "auth_", "secrets_", "backup_")


def resolve_literal(address: str) -> list[str]:
    """An IP address as itself; a host name's addresses are only known on the hosts (host_state.resolve)."""
    try:
        return [str(ipaddress.ip_address(address))]
    except ValueError:
        raise LookupError(f"{address} is a host name: resolve it on the host (host_state)") from None


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
    """Which inventory host runs each role, and how the others reach it."""

    db: str
    mas: str
    synapse: str
    proxy: tuple[str, ...]
    addresses: dict[str, str] = field(hash=False)

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
        roles = {r for r in SINGLE_INSTANCE_ROLES if getattr(self, r) == host}
        return roles | ({"proxy"} if host in self.proxy else set())


@dataclass(frozen=True)
class Settings:
    server_name: str
    public_url: str  # with a trailing slash
    mas_public_url: str
    auth_mode: str
    allow_auth_mode_downgrade: bool
    synapse_version: str
    synapse_port: int
    synapse_extra_config: dict[str, Any] = field(hash=False)
    # CA certificates (PEM files on the operator's machine) Synapse trusts for federation, instead of the system's.
    synapse_federation_ca_certificates: tuple[Path, ...]
    mas: MasRelease
    mas_port: int
    mas_health_port: int
    mas_extra_config: dict[str, Any] = field(hash=False)
    postgres_port: int
    tls: str  # acme, files or self-signed
    tls_certificate: Path | None
    tls_certificate_key: Path | None
    acme_directory_url: str
    acme_email: str | None
    acme_directory_ca: Path | None  # a CA the ACME directory's own HTTPS is signed by (a staging or lab ACME server)
    admin_user: str | None
    secrets_dir: Path
    secrets_age_identity: Path | None  # the operator's age key: the store is (or becomes) <inventory>.yaml.age
    backup_dir: str
    backup_keep: int
    placement: Placement
    # Registration, email and upstream providers (mas_settings.py).
    mas_features: mas_settings.MasSettings = field(default=mas_settings.MasSettings(False, False, None, ()), hash=False)

    @property
    def mas_email(self) -> mas_settings.Email | None:
        return self.mas_features.email

    @property
    def mas_upstream_providers(self) -> tuple[mas_settings.Provider, ...]:
        return self.mas_features.providers

    @property
    def mas_homeserver_kind(self) -> str:
        """MAS's matrix.kind for this Synapse: the legacy admin API before Synapse had the MAS API."""
        return "synapse" if version_tuple(self.synapse_version) >= MAS_API_MIN_SYNAPSE else "synapse_legacy"

    @property
    def public_host(self) -> str:
        return urlsplit(self.public_url).hostname

    @property
    def mas_public_host(self) -> str:
        return urlsplit(self.mas_public_url).hostname


DEPLOYMENT_KEYS = (
    "matrix_server_name",
    "matrix_public_url",
    "mas_public_url",
    "auth_mode",
    "allow_auth_mode_downgrade",
    "synapse_version",
    "synapse_port",
    "synapse_extra_config",
    "synapse_federation_ca_certificates",
    "mas_version",
    "mas_release_url",
    "mas_release_file",
    "mas_release_sha256",
    "mas_port",
    "mas_health_port",
    "mas_extra_config",
    "postgres_port",
    "tls",
    "tls_certificate",
    "tls_certificate_key",
    "acme_directory_url",
    "acme_email",
    "acme_directory_ca",
    "admin_user",
    "secrets_dir",
    "secrets_age_identity",
    "backup_dir",
    "backup_keep",
    *mas_settings.KEYS,
)
HOST_KEYS = ("internal_address",)
# Settings that are gone, and why: an inventory that still sets one is told what to do instead.
REMOVED_KEYS = {
    "postgres_version": "PostgreSQL's version follows each host's Debian release (15 on Debian 12, 17 on 13)",
}


class _Checker:
    """Reads settings from a data mapping, collecting every problem instead of stopping at the first."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.problems: list[str] = []

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"{key} = {value!r}: expected {expected}")

    def text(self, key: str, pattern: re.Pattern | None = None, expected: str = "", required: bool = True):
        value = self.data.get(key)
        if value is None:
            if required:
                self.problems.append(f"{key} is not set: expected {expected or 'a value'}")
            return None
        if not isinstance(value, str) or (pattern and not pattern.match(value)):
            self.bad(key, value, expected or "a string")
            return None
        return value

    def port(self, key: str) -> int | None:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.bad(key, value, "a TCP port number between 1 and 65535")
            return None
        return value

    def url(self, key: str, default: str | None) -> str | None:
        value = self.data.get(key) or default
        if value is None:
            return None
        parts = urlsplit(value) if isinstance(value, str) else None
        if not parts or parts.scheme != "https" or not parts.hostname or not HOSTNAME.match(parts.hostname):
            self.bad(key, value, "an https URL with a host name, like https://matrix.example.org/")
            return None
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            self.bad(key, value, "a bare https://host[:port]/ URL without path, query or fragment")
            return None
        return f"https://{parts.netloc}/"

    def version(self, key: str) -> str | None:
        return self.text(key, VERSION, "a release version like 1.2.3")

    def file(self, key: str) -> Path | None:
        value = self.data.get(key)
        if value is None:
            return None
        path = Path(value).expanduser() if isinstance(value, (str, Path)) else None
        if path is None or not path.is_file():
            self.bad(key, value, "an existing file on this machine")
            return None
        try:
            path.open("rb").close()
        except OSError as error:
            self.bad(key, value, f"a readable file ({error.strerror})")
            return None
        return path.resolve()

    def certificates(self, key: str) -> tuple[Path, ...]:
        """A list of files on this machine, each holding exactly one PEM certificate (Synapse reads one per file)."""
        value = self.data.get(key) or []
        if not isinstance(value, (list, tuple)):
            self.bad(key, value, "a list of CA certificate files (PEM) on this machine")
            return ()
        found = []
        for item in value:
            path = _Checker({key: item}).file(key)
            if path is None:
                self.bad(key, item, "a list of existing, readable CA certificate files (PEM) on this machine")
                continue
            try:
                count = len(x509.load_pem_x509_certificates(path.read_bytes()))
            except ValueError:
                count = 0
            if count != 1:
                self.bad(
                    key,
                    str(path),
                    f"a file with exactly one PEM certificate (it has {count}): Synapse reads one per file",
                )
                continue
            found.append(path)
        return tuple(found)

    def mapping(self, key: str, forbidden: dict[str, str]) -> dict:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            self.bad(key, value, "a mapping of config keys to values")
            return {}
        for name in value:
            if name in forbidden:
                self.problems.append(f"{key}.{name}: not allowed ({forbidden[name]}); expected {key} without {name}")
        return value


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unknown_keys(data: dict[str, Any], known: set[str]) -> list[str]:
    problems = []
    for key in data:
        if key in REMOVED_KEYS and data[key] is not None:
            problems.append(f"{key}: no longer a setting: {REMOVED_KEYS[key]}; expected no {key}")
        elif key.startswith(OUR_PREFIXES) and key not in known and key not in REMOVED_KEYS:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{key}: unknown setting{hint}; expected one of the settings in group_data/all.py")
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
        value = data.get("internal_address") or name
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not isinstance(value, str) or not HOSTNAME.match(value):
                problems.append(f"internal_address of host {name} = {value!r}: expected an IP address or host name")
        addresses[name] = value
    if any(not chosen[r] or (r in SINGLE_INSTANCE_ROLES and len(chosen[r]) != 1) for r in ROLES):
        return None
    return Placement(chosen["db"][0], chosen["mas"][0], chosen["synapse"][0], tuple(chosen["proxy"]), addresses)


def load(hosts: dict[str, dict[str, Any]], groups: dict[str, list[str]]) -> Settings:
    """Build the settings from each host's merged data and the role groups; raise SettingsError listing every problem."""
    problems: list[str] = []
    if not hosts:
        raise SettingsError(["the inventory has no hosts: put hosts in the db, mas, synapse and proxy groups"])
    names = list(hosts)
    first = hosts[names[0]]
    for name in names[1:]:
        for key in DEPLOYMENT_KEYS:
            if hosts[name].get(key) != first.get(key):
                problems.append(
                    f"{key} differs between hosts {names[0]} ({first.get(key)!r}) and {name} ({hosts[name].get(key)!r}): "
                    "expected one value for the whole deployment (set it in group data for all)"
                )
    for data in hosts.values():
        for problem in _unknown_keys(data, set(DEPLOYMENT_KEYS) | set(HOST_KEYS)):
            if problem not in problems:
                problems.append(problem)

    c = _Checker(first)
    server_name = c.text("matrix_server_name", HOSTNAME, "a DNS name like example.org (lower case, no scheme, no port)")
    public_url = c.url("matrix_public_url", f"https://matrix.{server_name}/" if server_name else None)
    mas_public_url = c.url("mas_public_url", f"https://auth.{server_name}/" if server_name else None)
    if public_url and mas_public_url and urlsplit(public_url).netloc == urlsplit(mas_public_url).netloc:
        problems.append(
            f"mas_public_url = {mas_public_url!r}: expected a host name of its own, not the one of matrix_public_url"
        )
    auth_mode = c.text("auth_mode", expected=f"one of {', '.join(AUTH_MODES)}")
    if auth_mode is not None and auth_mode not in AUTH_MODES:
        c.bad("auth_mode", auth_mode, f"one of {', '.join(AUTH_MODES)}")
    synapse_version = c.version("synapse_version")
    if synapse_version and auth_mode == "native" and version_tuple(synapse_version) < NATIVE_MIN_SYNAPSE:
        c.bad(
            "synapse_version",
            synapse_version,
            "1.136.0 or newer with auth_mode 'native' (matrix_authentication_service)",
        )
    if synapse_version and auth_mode == "msc3861" and version_tuple(synapse_version) > MSC3861_MAX_SYNAPSE:
        c.bad(
            "synapse_version",
            synapse_version,
            "1.156.0 or older with auth_mode 'msc3861' (1.157.0 removed experimental_features.msc3861; "
            "1.156.0 is the newest that has it), or auth_mode 'native'",
        )
    if synapse_version and auth_mode == "msc3861" and version_tuple(synapse_version) < MSC3861_MIN_SYNAPSE:
        c.bad(
            "synapse_version",
            synapse_version,
            "1.125.0 or newer with auth_mode 'msc3861' (the first whose msc3861 section reads client_secret_path "
            "and admin_token_path: secrets stay in files)",
        )
    if synapse_version and not locks.path(synapse_version).is_file():
        c.bad(
            "synapse_version",
            synapse_version,
            f"a version with a lock in the repository ({', '.join(locks.versions())}); "
            f"make one with `make lock SYNAPSE={synapse_version}` and commit it",
        )
    downgrade = first.get("allow_auth_mode_downgrade")
    if not isinstance(downgrade, bool):
        c.bad("allow_auth_mode_downgrade", downgrade, "true or false")
    mas_version = c.version("mas_version")
    sha = c.text("mas_release_sha256", SHA256, "the release tarball's sha256: 64 lower-case hex digits")
    release_file = c.file("mas_release_file")
    release_url = None
    if release_file is None and first.get("mas_release_file") is None:
        release_url = c.text("mas_release_url", expected="an http(s) URL of the MAS release tarball")
        if release_url and urlsplit(release_url).scheme not in ("http", "https"):
            c.bad("mas_release_url", release_url, "an http(s) URL of the MAS release tarball")
            release_url = None
        elif release_url and mas_version:
            release_url = release_url.replace("{version}", mas_version)
    if release_file and sha and sha256_of(release_file) != sha:
        problems.append(
            f"mas_release_file {release_file}: its sha256 is {sha256_of(release_file)}, but mas_release_sha256 = {sha}; "
            "expected the file the checksum was pinned for"
        )
    ports = {key: c.port(key) for key in ("synapse_port", "mas_port", "mas_health_port", "postgres_port")}
    seen: dict[int, str] = {443: "nginx (https)", 80: "nginx (http)"}
    for key, port in ports.items():
        if port in seen:
            problems.append(f"{key} = {port}: already used by {seen[port]}; expected a port of its own")
        elif port:
            seen[port] = key
    tls = c.text("tls", expected=f"one of {', '.join(TLS_MODES)}")
    if tls is not None and tls not in TLS_MODES:
        c.bad("tls", tls, f"one of {', '.join(TLS_MODES)}")
    cert, key = c.file("tls_certificate"), c.file("tls_certificate_key")
    given = [k for k in ("tls_certificate", "tls_certificate_key") if first.get(k) is not None]
    if tls == "files" and len(given) != 2:
        problems.append(
            "tls_certificate and tls_certificate_key: expected both set with tls = 'files' (your certificate and key)"
        )
    elif tls in ("acme", "self-signed") and given:
        problems.append(f"{given[0]}: expected unset with tls = {tls!r}; set tls = 'files' to use your own certificate")
    acme_url = c.text("acme_directory_url", re.compile(r"^https://\S+$"), "the https URL of an ACME directory")
    acme_email = c.text("acme_email", re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), "an email address", required=False)
    acme_ca = c.file("acme_directory_ca")
    admin_user = c.text(
        "admin_user",
        mas_settings.ADMIN_USER,
        "a user name MAS accepts: 1 to 255 of a-z, 0-9 and . _ = + -, not starting with _",
        required=False,
    )
    secrets_dir = first.get("secrets_dir")
    if not isinstance(secrets_dir, str) or not secrets_dir:
        c.bad("secrets_dir", secrets_dir, "a directory path on this machine")
    age_identity = c.file("secrets_age_identity") if first.get("secrets_age_identity") is not None else None
    if (
        age_identity is None
        and first.get("secrets_age_identity") is None
        and os.environ.get("MATRIX_DEPLOY_AGE_IDENTITY")
    ):
        age_identity = _Checker({"MATRIX_DEPLOY_AGE_IDENTITY": os.environ["MATRIX_DEPLOY_AGE_IDENTITY"]}).file(
            "MATRIX_DEPLOY_AGE_IDENTITY"
        )
        if age_identity is None:
            problems.append(
                f"MATRIX_DEPLOY_AGE_IDENTITY = {os.environ['MATRIX_DEPLOY_AGE_IDENTITY']!r}: expected your age "
                "identity file on this machine"
            )
    backup_dir = c.text("backup_dir", re.compile(r"^/[\w./-]*$"), "an absolute directory path on the hosts")
    backup_keep = first.get("backup_keep")
    if isinstance(backup_keep, bool) or not isinstance(backup_keep, int) or backup_keep < 1:
        c.bad("backup_keep", backup_keep, "a whole number of dumps to keep, 1 or more")
    synapse_extra = c.mapping("synapse_extra_config", SYNAPSE_FORBIDDEN)
    federation_cas = c.certificates("synapse_federation_ca_certificates")
    mas_extra = c.mapping("mas_extra_config", MAS_FORBIDDEN)
    if isinstance(mas_extra.get("account"), dict):
        for name in mas_extra["account"]:
            if name in MAS_ACCOUNT_FORBIDDEN:
                problems.append(
                    f"mas_extra_config.account.{name}: not allowed ({MAS_ACCOUNT_FORBIDDEN[name]}); expected account without {name}"
                )
    mas_features = mas_settings.load(first, problems)
    placement = _placement(hosts, groups, problems)

    problems = problems + c.problems
    if problems:
        raise SettingsError(problems)
    return Settings(
        server_name=server_name,
        public_url=public_url,
        mas_public_url=mas_public_url,
        auth_mode=auth_mode,
        allow_auth_mode_downgrade=downgrade,
        synapse_version=synapse_version,
        synapse_port=ports["synapse_port"],
        synapse_extra_config=synapse_extra,
        synapse_federation_ca_certificates=federation_cas,
        mas=MasRelease(mas_version, sha, release_url, release_file),
        mas_port=ports["mas_port"],
        mas_health_port=ports["mas_health_port"],
        mas_extra_config=mas_extra,
        postgres_port=ports["postgres_port"],
        tls=tls,
        tls_certificate=cert,
        tls_certificate_key=key,
        acme_directory_url=acme_url,
        acme_email=acme_email,
        acme_directory_ca=acme_ca,
        admin_user=admin_user,
        secrets_dir=Path(secrets_dir),
        secrets_age_identity=age_identity,
        backup_dir=backup_dir.rstrip("/"),
        backup_keep=backup_keep,
        placement=placement,
        mas_features=mas_features,
    )
