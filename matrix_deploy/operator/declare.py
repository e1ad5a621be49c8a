"""How a setting is declared (`Option`: name, default, one-line meaning, check), and the checks settings share;
how a secret file is declared (`SecretFile`).

A check reads one setting's value and returns what `Settings` holds, or appends each problem (the setting, the
bad value, what is expected) and returns None. Each service declares its settings with these in its own
`options.py`; `operator/options.py` lists them all.
"""

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# A check reads one setting's value: it returns what Settings holds, or appends each problem to `problems`
# (naming the setting, the value and what is expected) and returns None.
Check = Callable[[str, Any, list[str]], Any]


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    meaning: str  # one line of Markdown: the README's table
    check: Check
    shown: str | None = None  # the README's default column, when the default value alone does not say it
    per_host: bool = False  # each host has its own value; every other setting is one for the whole deployment


def bad(problems: list[str], key: str, value: Any, expected: str) -> None:
    problems.append(f"{key} = {value!r}: expected {expected}")


def text(pattern: re.Pattern | None, expected: str, required: bool = True) -> Check:
    def check(key, value, problems):
        if value is None:
            if required:
                problems.append(f"{key} is not set: expected {expected}")
            return None
        if not isinstance(value, str) or (pattern and not pattern.match(value)):
            return bad(problems, key, value, expected)
        return value

    return check


def one_of(*choices: str) -> Check:
    expected = f"one of {', '.join(choices)}"

    def check(key, value, problems):
        if value is None:
            problems.append(f"{key} is not set: expected {expected}")
        elif value not in choices:
            bad(problems, key, value, expected)
        else:
            return value

    return check


def boolean(key, value, problems):
    return value if isinstance(value, bool) else bad(problems, key, value, "true or false")


def port(key, value, problems):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return bad(problems, key, value, "a TCP port number between 1 and 65535")
    return value


def https_url(key, value, problems):
    """A bare https://host[:port]/ URL, normalised with its trailing slash; unset (or empty): None."""
    if not value:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if not parts or parts.scheme != "https" or not parts.hostname or not HOSTNAME.match(parts.hostname):
        return bad(problems, key, value, "an https URL with a host name, like https://matrix.example.org/")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        return bad(problems, key, value, "a bare https://host[:port]/ URL without path, query or fragment")
    return f"https://{parts.netloc}/"


def download_url(key, value, problems):
    """An http(s) URL; unset: None (settings.together() requires it when there is no release file)."""
    if value is not None and (not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https")):
        return bad(problems, key, value, "an http(s) URL of the MAS release tarball")
    return value


def local_file(key, value, problems):
    """A readable file on the operator's machine, as an absolute path; unset: None."""
    if value is None:
        return None
    path = Path(value).expanduser() if isinstance(value, (str, Path)) else None
    if path is None or not path.is_file():
        return bad(problems, key, value, "an existing file on this machine")
    try:
        path.open("rb").close()
    except OSError as error:
        return bad(problems, key, value, f"a readable file ({error.strerror})")
    return path.resolve()


def certificates(key, value, problems):
    """A list of files on this machine, each holding exactly one PEM certificate (Synapse reads one per file)."""
    value = value or []
    if not isinstance(value, (list, tuple)):
        return bad(problems, key, value, "a list of CA certificate files (PEM) on this machine") or ()
    found = []
    for item in value:
        path = local_file(key, item, [])
        if path is None:
            bad(problems, key, item, "a list of existing, readable CA certificate files (PEM) on this machine")
            continue
        try:
            count = len(x509.load_pem_x509_certificates(path.read_bytes()))
        except ValueError:
            count = 0
        if count != 1:
            expected = f"a file with exactly one PEM certificate (it has {count}): Synapse reads one per file"
            bad(problems, key, str(path), expected)
            continue
        found.append(path)
    return tuple(found)


def extra_config(forbidden: dict[str, str], sections: dict[str, dict[str, str]] | None = None) -> Check:
    """A mapping of config keys merged over a rendered config: `forbidden` keys (and keys of `sections`) refused."""

    def check(key, value, problems):
        value = value or {}
        if not isinstance(value, dict):
            return bad(problems, key, value, "a mapping of config keys to values") or {}
        for name in value:
            if name in forbidden:
                problems.append(f"{key}.{name}: not allowed ({forbidden[name]}); expected {key} without {name}")
        for section, refused in (sections or {}).items():
            for name in value.get(section) if isinstance(value.get(section), dict) else ():
                if name in refused:
                    problems.append(
                        f"{key}.{section}.{name}: not allowed ({refused[name]}); expected {section} without {name}"
                    )
        return value

    return check


def directory(key, value, problems):
    return (
        Path(value)
        if isinstance(value, str) and value
        else bad(problems, key, value, "a directory path on this machine")
    )


def age_identity(key, value, problems):
    """The age identity file; unset: $MATRIX_DEPLOY_AGE_IDENTITY's, if that is set."""
    env = os.environ.get("MATRIX_DEPLOY_AGE_IDENTITY")
    if value is not None or not env:
        return local_file(key, value, problems)
    path = local_file("MATRIX_DEPLOY_AGE_IDENTITY", env, problems)
    if path is None:
        bad(problems, "MATRIX_DEPLOY_AGE_IDENTITY", env, "your age identity file on this machine")
    return path


def host_directory(key, value, problems):
    """An absolute directory path on the hosts, without its trailing slash."""
    value = text(re.compile(r"^/[\w./-]*$"), "an absolute directory path on the hosts")(key, value, problems)
    return value and value.rstrip("/")


def dumps_to_keep(key, value, problems):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return bad(problems, key, value, "a whole number of dumps to keep, 1 or more")
    return value


def internal_address(key, value, problems):
    """An IP address or a host name, as given."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not isinstance(value, str) or not HOSTNAME.match(value):
            return bad(problems, key, value, "an IP address or host name")
    return value


@dataclass(frozen=True)
class SecretFile:
    """A file on the host holding one entry of the secrets store. Each service declares its own (its
    `secret_files.py`); operator/secret_table.py puts them in one table, from which the hosts' files and the
    store's entries follow."""

    role: str  # which deploy step writes it: mas, synapse, mas-admin or backup (the deploy's own, root only)
    path: str
    secret: str | None  # the store entry it holds (None: a file of an older layout, only ever removed)
    when: Callable[[Any], bool]  # of the Settings: whether the host has it
    owner: str = "root"
    # Also whenever the store holds its entry, whatever the settings (what an adoption leaves for good).
    while_stored: bool = False


def always(s) -> bool:
    return True


def never(s) -> bool:
    return False
