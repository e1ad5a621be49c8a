"""The Debian releases the deploy supports, and what follows from each: nothing an operator sets by hand.

The release is read from the host's /etc/os-release in host_state's one command; a host running
anything else is refused before anything on it changes.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    version: str  # VERSION_ID in /etc/os-release
    codename: str
    postgres: int  # the PostgreSQL major version Debian ships
    python: str  # python3's X.Y: what Synapse's virtualenv is built for
    # nginx >= 1.25.1 (trixie's 1.26) deprecates `listen ... http2` for a `http2 on;` directive.
    nginx_http2_directive: bool


RELEASES = {
    "12": Release("12", "bookworm", postgres=15, python="3.11", nginx_http2_directive=False),
    "13": Release("13", "trixie", postgres=17, python="3.13", nginx_http2_directive=True),
}
SUPPORTED = " and ".join(f"Debian {r.version} ({r.codename})" for r in RELEASES.values())


def release(os_id: str, version_id: str) -> Release | None:
    return RELEASES.get(version_id) if os_id == "debian" else None


def postgres_unit(major: int) -> str:
    """The cluster's own unit: the umbrella `postgresql` unit does not tell whether it runs."""
    return f"postgresql@{major}-main"


def older_postgres(release: Release) -> list[int]:
    """The PostgreSQL major versions of the supported releases before `release`: a host upgraded in place from one
    of them may still hold that version's cluster."""
    return sorted({r.postgres for r in RELEASES.values() if r.postgres < release.postgres})


# Every release's PostgreSQL unit: host_state asks about all of them before it knows the release.
POSTGRES_UNITS = tuple(postgres_unit(r.postgres) for r in RELEASES.values())
