"""PostgreSQL's settings, and the dumps taken before database migrations."""

from matrix_deploy.operator.declare import Option, dumps_to_keep, host_directory, port

OPTIONS = (
    Option("postgres_port", 5432, "PostgreSQL's port", port),
    Option(
        "backup_dir", "/var/backups/matrix-deploy",
        "where `pg_dump`s taken before database migrations go, on the MAS and Synapse hosts (and the `pg_dumpall` "
        "before a PostgreSQL upgrade across Debian releases, on the database host)", host_directory,
    ),
    Option("backup_keep", 5, "how many dumps of each database to keep", dumps_to_keep),
)  # fmt: skip
