"""Loading and checking MAS's config.yaml the way MAS 1.22.0 does.

MAS merges the files given with `--config` (or `MAS_CONFIG`, `:`-separated, default `config.yaml`)
with figment's `admerge`: mappings merge, lists are concatenated, later scalars win. Each command
extracts only the sections it uses (as MAS does): `database migrate` reads `database` only,
`config check` and `server` read everything.

A section is checked against MAS 1.22.0's JSON schema (config.schema.json, embedded at build time),
then with the checks MAS's deserialisation and `validate()` make (mutually exclusive options,
listener, client, email and upstream provider rules...). Like MAS's `config check`
(crates/cli/src/commands/config.rs: `RootConfig::extract` and nothing else), checking opens none of
the files the config names: each file is read where MAS reads it, and fails there. The encryption
file when `config sync` or `server` builds its encrypter (crates/config/src/sections/secrets.rs
`encryption()`: MAS hex-decodes the file's raw bytes, so it must hold exactly 64 hex digits and
nothing else, not even a trailing newline); client and provider secret files when `config sync`
writes them (not with `--dry-run`, crates/cli/src/sync.rs); signing keys when `server` starts
(`key_store()`); the database password when connecting; the matrix secret when talking to Synapse;
the SMTP password when the mailer is built.
"""

import ipaddress
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import fastjsonschema
import yaml

from . import log, rate_limit

ROOT_SECTIONS = ("clients", "http", "database", "telemetry", "templates", "email", "secrets", "passwords", "matrix",
                 "policy", "rate_limiting", "upstream_oauth2", "branding", "captcha", "account", "oauth",
                 "experimental")  # fmt: skip
DEFAULT_HTTP = {
    "listeners": [
        {"name": "web", "resources": [{"name": n} for n in ("discovery", "human", "oauth", "compat", "graphql", "assets")],
         "binds": [{"address": "[::]:8080"}]},
        {"name": "internal", "resources": [{"name": "health"}], "binds": [{"host": "localhost", "port": 8081}]},
    ],
    "public_base": "http://[::]:8080/",
}  # fmt: skip
DEFAULT_MATRIX = {"kind": "synapse", "homeserver": "localhost:8008", "endpoint": "http://localhost:8008/"}


class Invalid(Exception):
    """The configuration was refused; `problems` name the setting and what is wrong with it."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# ---------------------------------------------------------------- loading


def admerge(base, extra):
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = admerge(merged[key], value) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(extra, list):
        return base + extra
    return extra


def load(paths: list[str]) -> dict:
    config: dict = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            # figment skips a missing file; what it would have held is then reported missing.
            log.warn("mas_cli", "Configuration file not found, ignored", path=path)
            continue
        except OSError as error:
            raise Invalid([f"could not read configuration file {path}: {error.strerror}"]) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise Invalid([f"configuration file {path} is not valid YAML: {error}"]) from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise Invalid([f"configuration file {path}: expected a mapping at the top level"])
        config = admerge(config, loaded)
    return config


# ---------------------------------------------------------------- schema


def _uri(value: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S*$", value))


def _ip_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _lenient(value) -> bool:
    return True


FORMATS = {
    "uri": _uri,
    "ip": _ip_network,
    # MAS stores these as plain strings or numbers (ranges are checked by minimum/maximum).
    **{
        name: _lenient
        for name in ("hostname", "email", "uint", "uint8", "uint16", "uint32", "uint64", "double", "float")
    },
}


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads((resources.files(__package__) / "config.schema.json").read_text())


@lru_cache(maxsize=1)
def _validator():
    return fastjsonschema.compile(_schema(), formats=FORMATS, use_default=False)


def _setting(path: list[str]) -> str:
    out = ""
    for part in path[1:]:  # path[0] is fastjsonschema's "data"
        out += f"[{part}]" if str(part).isdigit() else (f".{part}" if out else str(part))
    return out or "(top level)"


def _type_name(value) -> str:
    return {dict: "a map", list: "a sequence", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def _origin(paths: tuple[str, ...], keys: list):
    """The config file a merged value came from, as figment tracks it: the files merged as `load` merges them
    (lists joined), with every value replaced by its file's name."""

    def named(node, path):
        if isinstance(node, dict):
            return {key: named(value, path) for key, value in node.items()}
        if isinstance(node, list):
            return [named(value, path) for value in node]
        return path

    origins: dict = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            origins = admerge(origins, named(loaded, path))
    try:
        for key in keys:
            origins = origins[int(key) if isinstance(origins, list) else key]  # fastjsonschema's indexes are text
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return origins if isinstance(origins, str) else None


def _explain(error: fastjsonschema.JsonSchemaValueException, paths: tuple[str, ...]) -> str:
    setting = _setting(error.path)
    definition = error.definition or {}
    if error.rule == "required" and isinstance(error.value, dict):
        missing = [key for key in definition.get("required", []) if key not in error.value]
        if missing:
            prefix = f"{setting}." if setting != "(top level)" else ""
            return f"{prefix}{missing[0]}: missing field `{missing[0]}`"
    if error.rule == "oneOf":
        variants = definition.get("oneOf", [])
        consts = [v.get("const") for v in variants if "const" in v]
        if consts and len(consts) == len(variants):
            expected = ", ".join(f"`{c}`" for c in consts)
            return f"{setting}: unknown variant `{error.value}`, expected one of {expected}"
        names = [v.get("properties", {}).get("name", {}).get("const") for v in variants]
        if all(names) and isinstance(error.value, dict):
            expected = ", ".join(f"`{n}`" for n in names)
            return f"{setting}.name: unknown variant `{error.value.get('name')}`, expected one of {expected}"
    if error.rule == "format" and definition.get("format") == "uri":
        return (
            f"{setting}: invalid URL {error.value!r}: expected an absolute URL with a scheme, like https://example.com/"
        )
    if error.rule == "format" and definition.get("format") == "ip":
        # ipnetwork's Deserialize error, as figment reports it: the key in its profile, and the file it came from.
        key = ".".join(str(part) for part in error.path[1:])
        origin = _origin(paths, error.path[1:])
        return f'invalid address: {error.value} for key "default.{key}"' + (f" in {origin} YAML file" if origin else "")
    if error.rule == "type":
        expected = definition.get("type")
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{setting}: invalid type: found {_type_name(error.value)}, expected {expected}"
    message = error.message
    if message.startswith(error.name):
        message = message[len(error.name) :].strip()
    return f"{setting}: {message}"


def _check_schema(config: dict, sections: tuple[str, ...], paths: tuple[str, ...]) -> list[str]:
    document = {key: config[key] for key in sections if key in config}
    # The root requires `secrets` and `matrix`; when a command does not read them, stand in empties.
    for required in ("secrets", "matrix"):
        if required not in sections:
            document[required] = {}
    try:
        _validator()(document)
    except fastjsonschema.JsonSchemaValueException as error:
        return [_explain(error, paths)]
    return []


# ---------------------------------------------------------------- MAS's own checks


def _both(section: dict, a: str, b: str) -> bool:
    return section.get(a) is not None and section.get(b) is not None


def _neither(section: dict, a: str, b: str) -> bool:
    return section.get(a) is None and section.get(b) is None


def _check_matrix(matrix: dict) -> list[str]:
    if _both(matrix, "secret", "secret_file"):
        return ["matrix: Cannot specify both `secret` and `secret_file`"]
    if _neither(matrix, "secret", "secret_file"):
        return ["matrix: Missing `secret` or `secret_file`"]
    return []


def _check_secrets(secrets: dict) -> list[str]:
    problems = []
    if _both(secrets, "encryption", "encryption_file"):
        problems.append("secrets: Cannot specify both `encryption` and `encryption_file`")
    elif _neither(secrets, "encryption", "encryption_file"):
        problems.append("secrets: Missing `encryption` or `encryption_file`")
    elif secrets.get("encryption") is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", secrets["encryption"]):
        problems.append("secrets.encryption: expected exactly 64 hexadecimal characters (32 bytes)")
    for i, key in enumerate(secrets.get("keys") or []):
        if _both(key, "key", "key_file"):
            problems.append(f"secrets.keys[{i}]: Cannot specify both `key` and `key_file`")
        elif _neither(key, "key", "key_file"):
            problems.append(f"secrets.keys[{i}]: Missing `key` or `key_file`")
        if _both(key, "password", "password_file"):
            problems.append(f"secrets.keys[{i}]: Cannot specify both `password` and `password_file`")
    return problems


def _check_database(database: dict) -> list[str]:
    split = ("host", "port", "socket", "username", "password", "password_file", "database")
    if database.get("uri") is not None and any(database.get(k) is not None for k in split):
        return ["database: uri must not be specified if host, port, socket, username, password, password_file, "
                "or database are specified"]  # fmt: skip
    if _both(database, "password", "password_file"):
        return ["database: password must not be specified if password_file is specified"]
    for a in ("ssl_ca", "ssl_certificate", "ssl_key"):
        if _both(database, a, f"{a}_file"):
            return [f"database: {a} must not be specified if {a}_file is specified"]
    has_key = database.get("ssl_key") is not None or database.get("ssl_key_file") is not None
    has_cert = database.get("ssl_certificate") is not None or database.get("ssl_certificate_file") is not None
    if has_key != has_cert:
        return ["database: both a ssl_certificate and a ssl_key must be set at the same time or none of them"]
    return []


def _check_clients(clients: list) -> list[str]:
    problems = []
    for i, client in enumerate(clients):
        where, method = f"clients[{i}]", client.get("client_auth_method")
        has_secret = client.get("client_secret") is not None or client.get("client_secret_file") is not None
        if _both(client, "client_secret", "client_secret_file"):
            problems.append(f"{where}: Cannot specify both `client_secret` and `client_secret_file`")
        elif method == "private_key_jwt":
            if _neither(client, "jwks", "jwks_uri"):
                problems.append(f"{where}.client_auth_method: jwks or jwks_uri is required for private_key_jwt")
            elif _both(client, "jwks", "jwks_uri"):
                problems.append(f"{where}.jwks: jwks and jwks_uri are mutually exclusive")
            elif has_secret:
                problems.append(f"{where}.client_secret: client_secret is not allowed with private_key_jwt")
        elif method in ("client_secret_post", "client_secret_basic", "client_secret_jwt"):
            if not has_secret:
                problems.append(f"{where}.client_auth_method: client_secret is required for {method}")
            elif client.get("jwks") is not None or client.get("jwks_uri") is not None:
                problems.append(f"{where}: jwks and jwks_uri are not allowed with {method}")
        elif method == "none":
            if has_secret:
                problems.append(f"{where}.client_secret: client_secret is not allowed with none authentication method")
            elif client.get("jwks") is not None or client.get("jwks_uri") is not None:
                problems.append(f"{where}: jwks and jwks_uri are not allowed with none authentication method")
    return problems


def _check_http(http: dict) -> list[str]:
    problems = []
    for i, listener in enumerate(http.get("listeners") or []):
        where = f"http.listeners[{i}]"
        if not listener.get("resources"):
            problems.append(f"{where}: listener has no resources")
        if not listener.get("binds"):
            problems.append(f"{where}: listener does not bind to any address")
        tls = listener.get("tls")
        if tls:
            if _both(tls, "certificate", "certificate_file") or _both(tls, "key", "key_file"):
                problems.append(f"{where}.tls: only one of `certificate`/`certificate_file`, `key`/`key_file`")
            if _neither(tls, "certificate", "certificate_file"):
                problems.append(f"{where}.tls: TLS configuration is missing a certificate")
            if _neither(tls, "key", "key_file"):
                problems.append(f"{where}.tls: TLS configuration is missing a private key")
    return problems


def _check_passwords(passwords: dict) -> list[str]:
    if passwords.get("enabled", True) is False:
        return []
    if "schemes" in passwords and not passwords["schemes"]:
        return ["passwords: Requires at least one password scheme in the config"]
    for i, scheme in enumerate(passwords.get("schemes") or []):
        if _both(scheme, "secret", "secret_file"):
            return [f"passwords.schemes[{i}]: Cannot specify both `secret` and `secret_file`"]
    return []


_MAILBOX = re.compile(r'^(?:[^<>"]*|"[^"]*")\s*<[^<>@\s]+@[^<>@\s]+>$|^[^<>@\s"]+@[^<>@\s]+$')


def _check_email(email: dict) -> list[str]:
    """crates/config/src/sections/email.rs `EmailConfig::validate` (first problem only, as figment stops)."""
    transport = email.get("transport")
    if transport == "blackhole":
        return []
    for field in ("from", "reply_to"):
        if not _MAILBOX.match(str(email.get(field, '"Authentication Service" <root@localhost>'))):
            return [f"email.{field}: invalid email address"]
    if transport == "smtp":
        has_password = email.get("password") is not None or email.get("password_file") is not None
        if email.get("username") is not None and not has_password:
            return ["email.password: missing field `password`"]
        if email.get("username") is None and has_password:
            return ["email.username: missing field `username`"]
        if _both(email, "password", "password_file"):
            return ["email.password: duplicate field `password_file`"]
        if email.get("mode") is None:
            return ["email.mode: missing field `mode`"]
        if email.get("hostname") is None:
            return ["email.hostname: missing field `hostname`"]
        if email.get("command") is not None:
            return ["email.command: unknown field `command`"]
    if transport == "sendmail":
        if email.get("command") is None:
            return ["email.command: missing field `command`"]
        for field in ("mode", "hostname", "port"):
            if email.get(field) is not None:
                return [f"email.{field}: unknown field `{field}`"]
    return []


def _check_upstream_oauth2(upstream: dict) -> list[str]:
    """crates/config/src/sections/upstream_oauth2.rs `UpstreamOAuth2Config::validate` (first problem only)."""
    for i, provider in enumerate(upstream.get("providers") or []):
        where = f"upstream_oauth2.providers[{i}]"
        method = provider.get("token_endpoint_auth_method", "client_secret_basic")
        has_secret = provider.get("client_secret") is not None or provider.get("client_secret_file") is not None
        if _both(provider, "client_secret", "client_secret_file"):
            return [f"{where}: Cannot specify both `client_secret` and `client_secret_file`"]
        if provider.get("discovery_mode", "oidc") != "disabled" and provider.get("issuer") is None:
            return [f"{where}: The `issuer` field is required when discovery is enabled"]
        if method in ("none", "private_key_jwt", "sign_in_with_apple") and has_secret:
            return [f"{where}: Unexpected field `client_secret` for the selected authentication method"]
        if method in ("client_secret_basic", "client_secret_post", "client_secret_jwt") and not has_secret:
            return [f"{where}: missing field `client_secret`"]
        signing_alg = provider.get("token_endpoint_auth_signing_alg") is not None
        if method in ("client_secret_jwt", "private_key_jwt") and not signing_alg:
            return [f"{where}: missing field `token_endpoint_auth_signing_alg`"]
        if method not in ("client_secret_jwt", "private_key_jwt") and signing_alg:
            return [
                f"{where}: Unexpected field `token_endpoint_auth_signing_alg` for the selected authentication method"
            ]
        if (method == "sign_in_with_apple") != (provider.get("sign_in_with_apple") is not None):
            return [
                f"{where}: missing field `sign_in_with_apple`"
                if method == "sign_in_with_apple"
                else f"{where}: Unexpected field `sign_in_with_apple` for the selected authentication method"
            ]
        claims = provider.get("claims_imports") or {}

        def action(name, claims=claims):
            return (claims.get(name) or {}).get("action", "ignore")

        if claims.get("skip_confirmation"):
            if action("localpart") != "require":
                return [
                    f"{where}.claims_imports.localpart: The field `action` must be `require` when "
                    "`skip_confirmation` is set to `true`"
                ]
            for name in ("email", "displayname"):
                if action(name) == "suggest":
                    return [
                        f"{where}.claims_imports.{name}: The field `action` must not be `suggest` when "
                        "`skip_confirmation` is set to `true`"
                    ]
        if (claims.get("localpart") or {}).get("on_conflict", "fail") != "fail" and action("localpart") not in (
            "force",
            "require",
        ):
            return [
                f"{where}.claims_imports.localpart: The field `action` must be either `force` or `require` when "
                "`on_conflict` is set to `add`, `replace` or `set`"
            ]
    return []


CHECKS = {"matrix": _check_matrix, "secrets": _check_secrets, "database": _check_database,
          "clients": _check_clients, "http": _check_http, "passwords": _check_passwords,
          "email": _check_email, "upstream_oauth2": _check_upstream_oauth2,
          "rate_limiting": rate_limit.check}  # fmt: skip


# ---------------------------------------------------------------- files, read where MAS reads them


def read_file(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise Invalid([f"{setting}: could not read file {path}: {error.strerror}"]) from None


def encryption_key(secrets: dict) -> bytes:
    """The 32-byte encryption key, with MAS's rule for the file: its raw bytes are hex-decoded."""
    if secrets.get("encryption") is not None:
        return bytes.fromhex(secrets["encryption"])
    path = secrets["encryption_file"]
    raw = read_file(path, "secrets.encryption_file")
    if re.fullmatch(rb"[0-9a-fA-F]{64}", raw):
        return bytes.fromhex(raw.decode())
    hint = ""
    if re.fullmatch(rb"[0-9a-fA-F]{64}", raw.strip()):
        hint = (" (it does, plus surrounding whitespace such as a trailing newline: MAS 1.22.0 hex-decodes the"
                " file's raw bytes without trimming them)")  # fmt: skip
    raise Invalid([f"secrets.encryption_file: Content of `encryption_file` must contain hex characters encoding"
                   f" exactly 32 bytes: {path} holds {len(raw)} bytes, expected exactly 64 hex digits{hint}"])  # fmt: skip


# ---------------------------------------------------------------- entry points


def check(config: dict, sections: tuple[str, ...] = ROOT_SECTIONS, paths: tuple[str, ...] = ()) -> None:
    """Raise Invalid unless the named sections are valid. Opens no file the config names, as MAS does not.

    `paths`: the config files `config` was merged from, for the messages that name the file, as figment's do.
    """
    problems = _check_schema(config, sections, paths)
    if problems:
        raise Invalid(problems)
    for section in sections:
        if section in CHECKS and config.get(section) is not None:
            problems += CHECKS[section](config[section])
    if problems:
        raise Invalid(problems)


def http(config: dict) -> dict:
    return config["http"] if "http" in config else DEFAULT_HTTP


def matrix(config: dict) -> dict:
    return {**DEFAULT_MATRIX, **{k: v for k, v in (config.get("matrix") or {}).items() if v is not None}}


def shared_secret(config: dict) -> str:
    """matrix.secret, or matrix.secret_file's content trimmed (MAS 1.22.0 trims it, like Synapse)."""
    m = config.get("matrix") or {}
    if m.get("secret") is not None:
        return m["secret"]
    return read_file(m["secret_file"], "matrix.secret_file").decode().strip()


def client_secret(client: dict) -> str | None:
    if client.get("client_secret") is not None:
        return client["client_secret"]
    if client.get("client_secret_file") is not None:
        return read_file(client["client_secret_file"], "client_secret_file").decode().strip()
    return None


def provider_secret(provider: dict) -> str | None:
    """An upstream provider's client secret (crates/config/src/sections/mod.rs `ClientSecret::value`: trimmed)."""
    if provider.get("client_secret") is not None:
        return provider["client_secret"]
    if provider.get("client_secret_file") is not None:
        return read_file(provider["client_secret_file"], "client_secret_file").decode().strip()
    return None


def smtp_password(config: dict) -> str | None:
    """email.rs `EmailConfig::password`: the file's content trimmed, read when the mailer is built."""
    email = config.get("email") or {}
    if email.get("password_file") is not None:
        return read_file(email["password_file"], "email.password_file").decode().strip()
    return email.get("password")


def _load_private_key(data: bytes) -> None:
    """mas_keystore's PrivateKey::load: PKCS#1 (RSA), PKCS#8 or SEC1 (EC), PEM or DER; ValueError otherwise."""
    from asn1crypto import keys, pem

    if pem.detect(data):
        kind, _, data = pem.unarmor(data)
        if kind not in ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"):
            raise ValueError(f"unsupported PEM label {kind}")
    for parser in (keys.PrivateKeyInfo, keys.RSAPrivateKey, keys.ECPrivateKey):
        try:
            parsed = parser.load(data, strict=True)
            parsed.native  # noqa: B018 - parses every field
            return
        except (ValueError, TypeError):
            continue
    raise ValueError("invalid private key")


def key_store(secrets: dict) -> int:
    """secrets.rs `key_store()`: load every signing key (keys_dir first, then keys); the number loaded."""
    configs = []
    if secrets.get("keys_dir") is not None:
        directory = Path(secrets["keys_dir"])
        try:
            configs += [{"key_file": str(f)} for f in sorted(directory.iterdir()) if f.is_file()]
        except OSError as error:
            raise Invalid([f"could not import keys from config: {error.strerror}"]) from None
    configs += secrets.get("keys") or []
    for config in configs:
        if config.get("password") is not None or config.get("password_file") is not None:
            raise Invalid(["could not import keys from config: the MAS stand-in loads no encrypted keys"])
        data = config["key"].encode() if config.get("key") is not None else read_file(config["key_file"], "key_file")
        try:
            _load_private_key(data)
        except ValueError as error:
            raise Invalid([f"could not import keys from config: {error}"]) from None
    return len(configs)


def passwords_enabled(config: dict) -> bool:
    return (config.get("passwords") or {}).get("enabled", True) is not False


def minimum_complexity(config: dict) -> int:
    return (config.get("passwords") or {}).get("minimum_complexity", 3)
