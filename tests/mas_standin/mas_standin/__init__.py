"""`mas-cli` stand-in.

Test double for matrix-authentication-service: the real MAS release cannot be downloaded on these
machines; this stand-in lives under tests/, is never selected or shipped by the product, and
implements only what the deployment and the end-to-end tests touch.

It follows MAS 1.22.0 (element-hq/matrix-authentication-service, tag v1.22.0) where the product and
Synapse touch it: the command line (`config check|sync|dump`, `database migrate`, `server`,
`worker`, `manage ...`), the config file (validated against MAS 1.22.0's JSON schema plus the checks
MAS makes when it loads the file), and over HTTP the health check, OIDC discovery, token
introspection for Synapse, the Matrix compatibility login/logout, the client_credentials grant and
the admin API's user endpoints (create, look up, set password, set admin). Users, compatibility
sessions, OAuth clients and their client_credentials sessions live in PostgreSQL (its own small
schema, not MAS's); users and devices are pushed to Synapse through Synapse's MAS API
(`/_synapse/mas/*`) or, for `matrix.kind: synapse_legacy`, through Synapse's admin API, exactly as
MAS's `modern.rs` / `legacy.rs` connections do.

Inside the zipapp, this package sits beside its pure-Python dependencies (PyYAML without its C
extension, fastjsonschema, pg8000 with scramp, asn1crypto, python-dateutil and six).
"""

from importlib import resources


def version() -> str:
    """The MAS version this stand-in poses as (written into the zipapp by build.py)."""
    try:
        return (resources.files(__name__) / "VERSION").read_text().strip()
    except (FileNotFoundError, OSError):
        return "0.0.0-source"
