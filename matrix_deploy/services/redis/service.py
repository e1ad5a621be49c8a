"""Redis for Synapse's workers (Debian's redis-server) beside Synapse's main process: on loopback, and on the
host's internal address when workers run on other hosts; a password from the secrets store; started from our
config, which reads Debian's and then sets what we need."""

from matrix_deploy.engine import host_state, wants
from matrix_deploy.engine.firewall import Door, to
from matrix_deploy.engine.wants import File
from matrix_deploy.operator.inventory import Deployment

CONFIG = "/etc/redis/matrix-deploy.conf"  # Debian's redis.conf, then ours (with the password): 0640 root:redis
DROP_IN = "/etc/systemd/system/redis-server.service.d/matrix-deploy.conf"
NEEDS = host_state.Needs(paths={"/etc/redis": 1, "/etc/systemd/system/redis-server.service.d": 1},
                         packages=("redis-server",))  # fmt: skip

# Up, and refusing commands without the password.
READY = "redis-cli -p {port} ping 2>&1 | grep -q NOAUTH"


def doors(s, here: str) -> list[Door]:
    """Redis beside the main process, for the other Synapse hosts' workers."""
    p = s.placement
    return to("Redis", [s.redis_port], p.synapse, here) if s.has_workers and here == p.synapse_main else []


def wanted(d: Deployment, own_addresses) -> list[File]:
    """Redis's config (with its password) and its unit's drop-in. `own_addresses`: host_state.bind_address."""
    port, p = d.settings.redis_port, d.settings.placement
    # -::1: IPv6 loopback where the host has it (the dash: not an error where it has not).
    bind = " ".join([*p.listen(p.synapse_main, list(p.synapse), own_addresses), "-::1"])
    config = (
        "# Managed by matrix-deploy: Debian's config, then what Synapse's workers need.\n"
        f"include /etc/redis/redis.conf\nbind {bind}\nprotected-mode yes\nport {port}\n"
        f"requirepass {d.secrets['redis_password']}\n"
    )
    start = f"[Service]\nExecStart=\nExecStart=/usr/bin/redis-server {CONFIG} --supervised systemd --daemonize no\n"
    return [
        File("Redis config (with its password)", CONFIG, config, "root", "redis", "640", secret=True),
        File("Redis starts from matrix-deploy's config", DROP_IN, start, "root", "root", "644"),
    ]


def install(d: Deployment) -> list:
    """Redis's config and unit drop-in, restarted when they change; returns the operations that changed them."""
    changes = wants.apply(wanted(d, host_state.current().bind_address))
    wants.restart(wants.Restart("redis", "redis-server", READY.format(port=d.settings.redis_port)), changes)
    return [op for op in changes if op is not None]
