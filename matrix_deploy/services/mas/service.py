"""matrix-authentication-service: a pinned, sha256-verified release, its config, database and unit."""

import json
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from matrix_deploy.engine import host_state, pending, remote, stages, wants
from matrix_deploy.engine.config_files import install_checked
from matrix_deploy.engine.firewall import Door, to
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import unit
from matrix_deploy.engine.wants import Absent, Directory, File, SystemUser, Want
from matrix_deploy.engine.yaml_config import deep_merge, dump
from matrix_deploy.operator import secret_table
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.delegation import service as auth_mode
from matrix_deploy.services.delegation.options import MSC3861_CLIENT_ID
from matrix_deploy.services.mas import options as mas_settings
from matrix_deploy.services.mas import secret_files as mas_secret_files
from matrix_deploy.services.mas.options import MAS_ADMIN_CLIENT_ID
from matrix_deploy.services.mas.paths import MAS_CONFIG, MAS_CURRENT, MAS_ETC, MAS_HOME, MAS_SECRETS, MAS_USER
from matrix_deploy.services.postgres.dumps import dump_before_migration

ADMIN_API_CREDENTIALS = f"{STATE}/mas-admin-api.curl"
ADMIN_PASSWORD_BODY = f"{STATE}/mas-admin-password.json"

# What this role reads through the host's snapshot (curl: health checks; postgresql-client: dumps before migrations).
NEEDS = host_state.Needs(
    paths={MAS_HOME: 2, MAS_ETC: 2, "/etc/systemd/system/mas.service": 0},
    users=(MAS_USER,),
    packages=("curl", "postgresql-client"),
)


def doors(s, here: str) -> list[Door]:
    """A MAS host's doors: the web listener for the proxies and for Synapse (which introspects tokens there), the
    metrics for the scrapers. The internal listener is loopback only: no door."""
    p = s.placement
    if here not in p.mas:
        return []
    return [*to("MAS's web listener", [s.mas_port], [*p.proxy, *p.synapse], here),
            Door("MAS's metrics", (s.mas_metrics_port,), scrapers=True)]  # fmt: skip


def secret_files(d: Deployment) -> dict[str, str]:
    """The files in /etc/mas/secrets this host has (secret_table.py) and what each holds."""
    # Exactly the value: MAS reads encryption_file byte for byte (64 hex digits, no newline).
    rows = secret_table.files(d.settings, "mas", d.secrets.values)
    return {path: d.secrets[row.secret].strip() for path, row in rows.items()}


def _secret_path(name: str) -> str:
    if name == "smtp_password":
        return f"{MAS_SECRETS}/smtp_password"
    return mas_secret_files.upstream_secret_path(name)


def config(d: Deployment, here: str | None = None, net=None) -> dict:
    """The config.yaml of the MAS instance on host `here` (default: the first): secrets by file, Synapse's main
    process and PostgreSQL by their internal addresses.

    `net` resolves internal addresses as the MAS host does (host_state.current()); IP addresses only without it.
    """
    s, p = d.settings, d.settings.placement
    here = here or p.mas_primary
    listen = p.listen(here, [*p.synapse, *p.proxy], net and net.bind_address)
    # MAS takes IP networks only: a proxy named by a host name is resolved here.
    trusted = ["127.0.0.1/8", "::1/128", *p.networks([h for h in p.proxy if h != here], net and net.resolve)]
    base = {
        "http": {
            "public_base": s.mas_public_url,
            "issuer": s.mas_public_url,
            "trusted_proxies": trusted,
            "listeners": [
                {
                    "name": "web",
                    "resources": [{"name": r} for r in ("discovery", "human", "oauth", "compat", "graphql", "assets")],
                    "binds": [{"host": a, "port": s.mas_port} for a in listen],
                },
                {
                    # Loopback only, never proxied: health checks, and the admin API that creates admin_user.
                    "name": "internal",
                    "resources": [{"name": r} for r in ("health", *(("oauth", "adminapi") if s.admin_user else ()))],
                    "binds": [{"host": "127.0.0.1", "port": s.mas_internal_port}],
                },
                # Prometheus, bound like the web listener (loopback, plus the internal address when other hosts
                # reach MAS): nginx never proxies it.
                {
                    "name": "metrics",
                    "resources": [{"name": "prometheus"}],
                    "binds": [{"host": a, "port": s.mas_metrics_port} for a in listen],
                },  # fmt: skip
            ],
        },
        "telemetry": {"metrics": {"exporter": "prometheus"}},
        "database": {
            "host": p.reach(here, p.db),
            "port": s.postgres_port,
            "username": "mas",
            "password_file": f"{MAS_SECRETS}/database_password",
            "database": "mas",
        },
        "secrets": {
            "encryption_file": f"{MAS_SECRETS}/encryption_key",
            "keys": [
                {"kid": "rsa", "key_file": f"{MAS_SECRETS}/signing_rsa.pem"},
                {"kid": "ec", "key_file": f"{MAS_SECRETS}/signing_ec.pem"},
            ],
        },
        "matrix": {
            "kind": s.mas_homeserver_kind,
            "homeserver": s.matrix_server_name,
            "endpoint": f"http://{p.endpoint(here, p.synapse_main, s.synapse_port)}/",
            "secret_file": f"{MAS_SECRETS}/matrix_secret",
        },
        "passwords": _passwords(d),
        **mas_settings.config(s, _secret_path),
    }
    clients = {}
    if s.auth_mode == "msc3861":
        clients[MSC3861_CLIENT_ID] = "synapse_client_secret"
    if s.admin_user:
        clients[MAS_ADMIN_CLIENT_ID] = "admin_client_secret"
        base["policy"] = {"data": {"admin_clients": [MAS_ADMIN_CLIENT_ID]}}
    if clients:
        base["clients"] = [
            {"client_id": c, "client_auth_method": "client_secret_basic", "client_secret_file": f"{MAS_SECRETS}/{f}"}
            for c, f in clients.items()
        ]
    return deep_merge(base, s.mas_extra_config)


def _passwords(d: Deployment) -> dict:
    """MAS's passwords; for an adopted Synapse, its bcrypt hashes (with its pepper, NFKC as Synapse) verified as
    version 1, each upgraded to argon2id (version 2) at its user's next login, as MAS's migration guide says: while
    adopting, and after it for as long as the store holds the old pepper (adopt_synapse may go once delegated):
    exactly when the secret table gives MAS the pepper file."""
    if mas_secret_files.PEPPER not in secret_table.files(d.settings, "mas", d.secrets.values):
        return {"enabled": True}
    bcrypt = {"version": 1, "algorithm": "bcrypt", "unicode_normalization": True}
    if d.secrets.values.get("synapse_password_pepper"):
        bcrypt["secret_file"] = mas_secret_files.PEPPER
    return {"enabled": True, "schemes": [bcrypt, {"version": 2, "algorithm": "argon2id"}]}


def render_config(d: Deployment, here: str | None = None, net=None) -> str:
    return dump(config(d, here, net))


def _release(d: Deployment):
    """Put the release tarball on the host and unpack it into /opt/mas/<version> once, sha256 checked.

    Beside the running release: the current link moves to it only at the restart (pending.restart's switch).
    """
    release = d.settings.mas_release
    archive = f"{STATE}/downloads/{release.archive_name}"
    target = f"{MAS_HOME}/{release.version}"
    if host_state.current().is_file(f"{target}/.release-sha256", release.sha256 + "\n"):
        return []
    host_state.directory("MAS download directory", f"{STATE}/downloads", mode="700")
    if release.file:
        files.put(name=f"Upload MAS {release.version} release", src=str(release.file), dest=archive, mode="600")
    else:
        files.download(
            name=f"Download MAS {release.version} release", src=release.url, dest=archive, sha256sum=release.sha256
        )
    unpack = remote.shell(
        name=f"Unpack MAS {release.version} into {target}",
        commands=[
            f"""
set -e
if ! echo "{release.sha256}  {archive}" | sha256sum -c --quiet - >/dev/null 2>&1; then
    echo "MAS release {archive}: sha256 is $(sha256sum {archive} | cut -d' ' -f1), expected {release.sha256} (mas_release_sha256)" >&2
    rm -f {archive}
    exit 1
fi
rm -rf {target}.partial
mkdir -p {target}.partial
tar -xzf {archive} -C {target}.partial
test -x {target}.partial/mas-cli
echo {release.sha256} > {target}.partial/.release-sha256
rm -rf {target}
mv {target}.partial {target}
"""
        ],
    )
    return [unpack]


def named_files(value, where: str = "") -> list[tuple[str, str]]:
    """Every file MAS's config names, with its setting: (`clients[0].client_secret_file`, path)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            setting = f"{where}.{key}" if where else key
            if isinstance(item, str) and (key.endswith("_file") or key in ("keys_dir", "wasm_module")):
                found.append((setting, item))
            else:
                found += named_files(item, setting)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += named_files(item, f"{where}[{i}]")
    return found


def gate(config: dict, release_dir: str) -> str:
    """What a MAS config must pass before it goes live: what MAS 1.22.0 checks at start, before it is live.

    `mas-cli config check` only parses (it opens no file: crates/cli/src/commands/config.rs), so also:
    `templates check` (templates, translations and the site settings), every file the config names
    readable by MAS's user (MAS reads client and provider secrets at `config sync`, keys at `server`
    start, the SMTP password with the mailer: a missing or unreadable one stops MAS then), and
    `config sync --dry-run` against the candidate, which builds MAS's encrypter from `encryption_file`
    (MAS's own check of the key) and connects to the database with the candidate's settings. Run by the
    release in `release_dir`, the one about to start, while the running one keeps serving. The
    signing keys' and encryption key's contents come from the secrets store, checked before any
    connection (secrets.py), as no mas-cli command loads keys without starting the server.
    """
    run = f"runuser -u {MAS_USER} --"
    steps = [
        f"cd {release_dir}",
        f"{run} ./mas-cli config check --config {MAS_CONFIG}",
        f"{run} ./mas-cli templates check --config {MAS_CONFIG}",
    ]
    for setting, path in named_files(config):
        test = "test -d" if setting.endswith("keys_dir") else "head -c0 --"
        steps.append(
            f"{{ {run} {test} {shlex.quote(path)} || {{ echo {shlex.quote(f'{setting}: MAS (user {MAS_USER}) cannot read {path}; it reads it when it syncs or starts')}; false; }}; }}"
        )
    steps.append(f"{run} ./mas-cli config sync --dry-run --config {MAS_CONFIG}")
    return " && ".join(steps)


def prune_without_providers(cli: str) -> str:
    """`config sync --prune` (it removes the client MAS kept for Synapse in msc3861 mode), unless it would also
    delete upstream providers: --prune deletes every disabled provider with its users' links
    (crates/cli/src/sync.rs), such as one an operator removed from the settings for a while. Then a plain
    sync, and the client is left for the operator to prune once they have decided."""
    return f"""
set -e
out=$({cli} config sync --prune --dry-run --config {MAS_CONFIG} 2>&1) || {{ echo "$out" >&2; exit 1; }}
if printf '%s\n' "$out" | grep -q 'Deleting provider'; then
    echo "MAS kept its client for Synapse ({MSC3861_CLIENT_ID}): config sync --prune would also delete these" \
        "upstream providers (no longer in the settings) with their users' links:" >&2
    printf '%s\n' "$out" | grep 'Deleting provider' >&2
    echo "Run mas-cli config sync --prune yourself once they may go." >&2
    {cli} config sync --config {MAS_CONFIG}
else
    {cli} config sync --prune --config {MAS_CONFIG}
fi
"""


# Its user, and the directories every MAS host has.
HOME = [
    SystemUser("MAS", MAS_USER, MAS_HOME),
    Directory("MAS home", MAS_HOME, "root", "root", "755"),
    Directory("MAS config directory", MAS_ETC, "root", MAS_USER, "750"),
    Directory("MAS secrets directory", MAS_SECRETS, "root", MAS_USER, "750"),
]


def wanted_secrets(d: Deployment, present: list[str]) -> list[Want]:
    """This host's secret files in /etc/mas/secrets, and none of those it should no longer have (of the
    `present` paths, upstream providers' secrets no longer configured)."""
    out: list[Want] = [
        File(f"MAS secret {path.rsplit('/', 1)[1]}", path, content, MAS_USER, MAS_USER, "400", secret=True)
        for path, content in secret_files(d).items()
    ]
    stale = secret_table.stale(d.settings, "mas", present, d.secrets.values)
    return out + [Absent(f"No stale MAS secret {path.rsplit('/', 1)[1]}", path) for path in stale]


def _migrate_and_sync(d: Deployment, release_dir: str, marked: list) -> None:
    """On the first instance's host, when a restart is due: the release's database migrations and config sync
    (pruning Synapse's old client when moving to native delegation)."""
    cli = f"cd {release_dir} && runuser -u {MAS_USER} -- ./mas-cli"
    sync = f"{cli} config sync --config {MAS_CONFIG}"
    if auth_mode.migrating_to_native(d):
        sync = prune_without_providers(cli)
    if (migrate := pending.due("mas", marked)) is not None:
        remote.shell(
            name="MAS database migrations and config sync",
            commands=[f"{cli} database migrate --config {MAS_CONFIG}", sync],
            _if=migrate,
        )


# MAS instances installed but not started in this run (host -> what start_held needs): an adoption imports first.
_held: dict[str, tuple[list, str]] = {}


@deploy("matrix-authentication-service")
def install(d: Deployment, hold: bool = False):
    """Each MAS instance; the first runs the database migrations and config sync, once per change, before any
    instance restarts; then they restart one at a time (stages.in_turn), each healthy first. With `hold`, they
    do not start until start_held()."""
    p, here, state = d.settings.placement, host.name, host_state.current()
    primary = here == p.mas_primary
    wants.apply(HOME)
    release = _release(d)
    release_dir = f"{MAS_HOME}/{d.settings.mas_version}"
    # A release to switch to is a restart due before anything else happens: a run that dies before the
    # restart still switches and restarts next time.
    switch = None
    if not state.is_link(MAS_CURRENT, release_dir):
        switch = pending.mark_now("mas", f"switches to MAS {d.settings.mas_version}")
    present = [path for path in state.paths if path.startswith(MAS_SECRETS + "/")]
    changes = [*release, switch, *wants.apply(wanted_secrets(d, present))]
    # A new release is recorded as a due restart before the dump: a run killed during the dump still
    # restarts MAS on the new release next time (the dump and everything else may then find nothing to do).
    release_marked = pending.mark("mas", release)
    if primary:
        # Before the gate: its `config sync --dry-run` runs the new release's database migrations (config.rs).
        dump_before_migration(
            d,
            "mas",
            "mas",
            p.reach(here, p.db),
            f'PGPASSWORD="$(cat {MAS_SECRETS}/database_password)"',
            release,
            switch is not None,
        )
    # In turn: the first instance's gate migrates the database (config sync --dry-run), the others' find it done.
    rendered = config(d, here, state)
    for _ in stages.in_turn("MAS config", list(p.mas), str):
        changes.append(
            install_checked(
                MAS_CONFIG,
                dump(rendered),
                check=gate(rendered, release_dir),
                user="root",
                group=MAS_USER,
                mode="640",
                service="MAS",
                secrets=d.secrets.values.values(),
                recheck=list(changes),
            )
        )
    changes.append(
        unit(
            "MAS",
            "mas.service",
            "mas/mas.service.j2",
            service_user=MAS_USER,
            current=MAS_CURRENT,
            config=MAS_CONFIG,
        )
    )
    stale_admin = secret_table.stale(d.settings, "mas-admin", [])
    wants.apply([Absent(f"No stale MAS admin API file {path.rsplit('/', 1)[1]}", path) for path in stale_admin])
    marked = [switch, release_marked, pending.mark("mas", changes)]
    # The new release migrates and syncs while the old one serves; the switch is the restart alone. Once, by
    # the first instance's host: every instance starts with --no-migrate --no-sync (the unit).
    if primary:
        _migrate_and_sync(d, release_dir, marked)
    if hold:
        _held[here] = (marked, release_dir)
    else:
        _start(d, marked, release_dir)
    auth_mode.record(d)


def _start(d: Deployment, marked: list, release_dir: str) -> None:
    for _ in stages.in_turn("MAS instance", list(d.settings.placement.mas), str):
        pending.restart("mas", "mas", f"curl -fsS http://127.0.0.1:{d.settings.mas_internal_port}/health", marked,
                        switch=(MAS_CURRENT, release_dir))  # fmt: skip


def start_held(d: Deployment) -> None:
    """The instances install(hold=True) left stopped, started (restarted) now, one at a time, each healthy first."""
    if host.name in _held:
        _start(d, *_held.pop(host.name))


@deploy("MAS admin user")
def admin_user(d: Deployment):
    """Create the initial admin once, through MAS's admin API on the loopback-only internal listener.

    The client secret, the access token and the password travel in root-only files and a shell
    variable, never on a command line (`mas-cli manage register-user` only takes `--password`).
    An existing user is left as it is.
    """
    user, port = d.settings.admin_user, d.settings.mas_internal_port
    curl_config, password_body = ADMIN_API_CREDENTIALS, ADMIN_PASSWORD_BODY
    host_state.secret("MAS admin API client credentials", curl_config,
                      f'user = "{MAS_ADMIN_CLIENT_ID}:{d.secrets["mas_admin_client_secret"]}"\n', "root", "root")  # fmt: skip
    host_state.secret("MAS admin password", password_body,
                      json.dumps({"password": d.secrets["admin_password"], "skip_password_check": True}), "root", "root")  # fmt: skip
    done = f"{STATE}/admin-user-{user}"
    if host_state.current().exists(done):
        return
    api = f"http://127.0.0.1:{port}"
    remote.shell(
        name=f"Register MAS admin user {user}",
        commands=[
            # Begins on a line of its own, like every multi-line command here (the rendered command is unchanged).
            "\n"
            + render(
                "mas/admin-user.sh.j2",
                curl_config=curl_config,
                password_body=password_body,
                api=api,
                user=user,
                done=done,
            )  # fmt: skip
        ],
    )
