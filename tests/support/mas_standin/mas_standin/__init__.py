"""`mas-cli` stand-in.

Test double for matrix-authentication-service: the real MAS release cannot be downloaded on these
machines; this stand-in lives under tests/, is never selected or shipped by the product, and
implements only what the deployment and the end-to-end tests touch.

It follows MAS 1.22.0 (element-hq/matrix-authentication-service, tag v1.22.0) where the product and
Synapse touch it, neither stricter nor laxer (a double stricter than the real program hides bugs as
surely as a laxer one): the command line (`config check|sync|dump`, `database migrate`, `server`,
`worker`, `manage ...`, `templates check`), the config file (validated against MAS 1.22.0's JSON
schema plus the checks MAS makes when it loads the file; `config check` opens none of the files the
config names, each is read where MAS reads it: config.py), `config sync` of clients and upstream
providers (crates/cli/src/sync.rs: store.py), the order `server` starts in
(crates/cli/src/commands/server.rs: server.py), and over HTTP the health check, OIDC discovery
(crates/handlers/src/oauth2/discovery.rs), the login page's providers, password registration
(crates/handlers/src/views/register/password.rs), token
introspection for Synapse, the Matrix compatibility login/logout, the client_credentials grant and
the admin API's user endpoints (create, look up, set password, set admin). Users, compatibility
sessions, OAuth clients and their client_credentials sessions, upstream providers and their links
live in PostgreSQL (its own small schema, not MAS's; the 1.22.0 build has a migration the 1.21.0
build has not, so an upgrade migrates: database.py); users and devices are pushed to Synapse through Synapse's MAS API
(`/_synapse/mas/*`) or, for `matrix.kind: synapse_legacy`, through Synapse's admin API, exactly as
MAS's `modern.rs` / `legacy.rs` connections do. `syn2mas check|migrate [--dry-run]` adopts a Synapse's users,
passwords, emails, upstream links, devices and tokens as MAS 1.22.0's crates/syn2mas does (syn2mas.py); the
imported Synapse tokens (`syt_`, macaroons) work at introspection and in the compat API, Synapse's refresh
tokens at the compat refresh, and its bcrypt hashes at password login, verified by their scheme version
(`passwords.schemes`) and upgraded to the newest (passwords.py).

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
