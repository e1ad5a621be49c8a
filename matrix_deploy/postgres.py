"""PostgreSQL (Debian package): a role and a database each for Synapse and MAS, scram-sha-256, local by default."""

from pyinfra.api import deploy
from pyinfra.operations import files, server

from . import restarts
from .inventory import Deployment
from .paths import TEMPLATES
from .secret_files import secret_file

# In postgres's home: readable by postgres only.
SQL_FILE = "/var/lib/postgresql/matrix-deploy-roles.sql"


def roles_sql(d: Deployment) -> str:
    """Idempotent SQL that creates (or updates the passwords of) the roles and databases."""
    lines = ["\\set ON_ERROR_STOP on", "SET password_encryption = 'scram-sha-256';"]
    for name, password, extra in (
        ("synapse", d.secrets["synapse_db_password"], "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"),
        ("mas", d.secrets["mas_db_password"], "ENCODING 'UTF8' TEMPLATE template0"),
    ):
        quoted = password.replace("'", "''")
        lines += [
            f"SELECT 'CREATE ROLE {name} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') \\gexec",
            f"ALTER ROLE {name} LOGIN PASSWORD '{quoted}';",
            f"SELECT $$CREATE DATABASE {name} OWNER {name} {extra}$$"
            f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}') \\gexec",
        ]
    return "\n".join(lines) + "\n"


def hba_clients(d: Deployment) -> list[str]:
    """Addresses allowed to log in over TCP: loopback, plus the MAS and Synapse hosts when remote."""
    p = d.settings.placement
    remote = {p.addresses[h] for h in (p.mas, p.synapse) if h != p.db}
    return ["127.0.0.1/32", "::1/128"] + [f"{a}/32" if ":" not in a else f"{a}/128" for a in sorted(remote)]


@deploy("PostgreSQL")
def install(d: Deployment):
    s = d.settings
    conf_dir = f"/etc/postgresql/{s.postgres_version}/main"
    unit = f"postgresql@{s.postgres_version}-main"
    listen = s.placement.listen(s.placement.db, [s.placement.mas, s.placement.synapse])
    conf = files.template(
        name="PostgreSQL listens where MAS and Synapse reach it",
        src=str(TEMPLATES / "postgres/matrix-deploy.conf.j2"),
        dest=f"{conf_dir}/conf.d/matrix-deploy.conf",
        listen=listen,
        port=s.postgres_port,
        user="postgres",
        group="postgres",
        mode="644",
    )
    hba = files.template(
        name="PostgreSQL client authentication (scram-sha-256)",
        src=str(TEMPLATES / "postgres/pg_hba.conf.j2"),
        dest=f"{conf_dir}/pg_hba.conf",
        clients=hba_clients(d),
        user="postgres",
        group="postgres",
        mode="640",
    )
    marked = restarts.mark("postgres", [conf, hba])
    restarts.restart("postgres", unit, f"cd / && runuser -u postgres -- pg_isready -q -p {s.postgres_port}", marked)
    # The instance itself, not the umbrella `postgresql` unit, tells whether it runs.
    server.service(name="PostgreSQL is running", service=unit, running=True, enabled=True)
    sql = secret_file(name="Roles and databases for Synapse and MAS", path=SQL_FILE, content=roles_sql(d),
                      user="postgres", group="postgres", mode="400")  # fmt: skip
    server.shell(
        name="Create or update the roles and databases",
        # A failed run removes the file, so the next run uploads and runs it again.
        commands=[
            f"cd / && runuser -u postgres -- psql -X -q -p {s.postgres_port} -f {SQL_FILE} || {{ rm -f {SQL_FILE}; exit 1; }}"
        ],
        _if=sql.did_change,
    )
