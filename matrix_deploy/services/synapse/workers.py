"""Synapse workers (Synapse's docs/workers.md): generic_worker processes on the Synapse hosts (beside the main
process on the first, alone on the others), talking to each other through Redis (replication, on the main
process's host) and HTTP (`instance_map`), each its own hardened unit `synapse-worker@<name>`; nginx sends each
endpoint to the kind of worker that serves it, over the instances on every host.

`synapse_workers` maps a kind to a count. What each kind does and which paths nginx sends it:
"""

from collections import Counter
from dataclasses import dataclass

from matrix_deploy.services.synapse.paths import SYNAPSE_ETC

KINDS = {
    "generic": "client reads, sync, event sending and inbound federation, load-balanced",
    "event_persister": "writes the events stream (room events persisted, sharded by room)",
    "federation_sender": "sends outbound federation",
    "media_repository": "the media repository (uploads, downloads, thumbnails)",
    "pusher": "sends push notifications",
    "background": "Synapse's background tasks (at most one)",
}
WORKERS_DIR = f"{SYNAPSE_ETC}/workers"  # one config per worker, beside the shared homeserver.yaml

_CLIENT = r"^/_matrix/client/(api/v1|r0|v3|unstable)"
# Paths a generic worker serves (Synapse's docs/workers.md); login, logout and refresh are MAS's (the
# compatibility layer comes first in nginx), /messages stays with the main process (pagination of a room
# must stay on one instance).
SYNC_ROUTES = [
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/(events|initialSync)$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
]
INBOUND_FEDERATION_ROUTES = [r"^/_matrix/federation/v1/send/"]
GENERIC_ROUTES = [
    r"^/_matrix/federation/v1/(version$|event/|state/|state_ids/|backfill/|get_missing_events/|publicRooms"
    r"|query/|make_join/|make_leave/|make_knock/|send_knock/|event_auth/|timestamp_to_event/"
    r"|exchange_third_party_invite/|user/devices/|hierarchy/)",
    r"^/_matrix/federation/(v1|v2)/(send_join|send_leave|invite)/",
    r"^/_matrix/key/v2/query",
    r"^/_matrix/client/(r0|v3|unstable)/(capabilities|account/whoami|notifications)$",
    r"^/_matrix/client/versions$",
    _CLIENT + r"/(createRoom|publicRooms|joined_rooms|search)$",
    _CLIENT + r"/rooms/[^/]+/(joined_members|members|state|context/|event/|aliases|redact|send)",
    _CLIENT + r"/rooms/[^/]+/(join|invite|leave|ban|unban|kick)$",
    _CLIENT + r"/(join|knock|profile)/",
    r"^/_matrix/client/v1/rooms/[^/]+/(hierarchy|threads|timestamp_to_event)$",
    r"^/_matrix/client/(v1|unstable)/rooms/[^/]+/relations/",
    r"^/_matrix/client/(r0|v3|unstable)/keys/(query|changes|claim)$",
    r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/[^/]+/filter(/|$)",
    _CLIENT + r"/directory/room/",
]
MEDIA_ROUTES = [r"^/_matrix/media/", r"^/_matrix/client/v1/media/", r"^/_matrix/federation/v1/media/"]


@dataclass(frozen=True)
class Worker:
    kind: str
    index: int  # 1, 2... within its kind, across hosts
    host: str  # the Synapse host (inventory name) it runs on
    port: int  # its HTTP listener: /health, what its kind serves, replication
    metrics_port: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def unit(self) -> str:
        return f"synapse-worker@{self.name}"

    @property
    def config_path(self) -> str:
        return f"{WORKERS_DIR}/{self.name}.yaml"

    @property
    def resources(self) -> list[str]:
        served = {"generic": ["client", "federation"], "media_repository": ["media"]}.get(self.kind, [])
        # Every worker answers replication requests (instance_map): event persisters must, others may be asked.
        return [*served, "replication"]


def workers(s) -> list[Worker]:
    """Every worker the settings `s` ask for (synapse_workers), host by host in the synapse group's order, kinds
    in KINDS order, numbered within a kind across hosts (generic-1, generic-2 on the next host...). On each host
    the ports count up from synapse_worker_port (HTTP) and synapse_metrics_port + 1 (the main process's is
    synapse_metrics_port)."""
    found, numbered = [], Counter()
    for host, counts in s.synapse_workers.items():
        for n, kind in enumerate(k for k in KINDS for _ in range(counts.get(k, 0))):
            numbered[kind] += 1
            found.append(Worker(kind, numbered[kind], host, s.synapse_worker_port + n, s.synapse_metrics_port + 1 + n))
    return found


def shared_config(ws: list[Worker], reach, main: str, main_port: int, redis_port: int, secrets_dir: str) -> dict:
    """What homeserver.yaml (read by the main process and every worker) says about the workers.

    `reach(host)` is the address this Synapse host uses for another (loopback for itself); Redis runs beside
    the main process, on host `main`.
    """
    names = {kind: [w.name for w in ws if w.kind == kind] for kind in KINDS}
    config = {
        "redis": {"enabled": True, "host": reach(main), "port": redis_port, "password_path": f"{secrets_dir}/redis_password"},
        "worker_replication_secret_path": f"{secrets_dir}/worker_replication_secret",
        "instance_map": {
            "main": {"host": reach(main), "port": main_port},
            **{w.name: {"host": reach(w.host), "port": w.port} for w in ws},
        },
    }  # fmt: skip
    if names["event_persister"]:
        config["stream_writers"] = {"events": names["event_persister"]}
    if names["federation_sender"]:
        config["federation_sender_instances"] = names["federation_sender"]
    if names["pusher"]:
        config["pusher_instances"] = names["pusher"]
    if names["background"]:
        config["run_background_tasks_on"] = names["background"][0]
    if names["media_repository"]:
        # The main process stops serving media; one media worker runs the media background jobs.
        config["enable_media_repo"] = False
        config["media_instance_running_background_jobs"] = names["media_repository"][0]
    return config


def worker_config(w: Worker, bind: list[str], log_config: str) -> dict:
    config = {
        "worker_app": "synapse.app.generic_worker",
        "worker_name": w.name,
        "worker_log_config": log_config,
        "worker_listeners": [
            {"type": "http", "port": w.port, "bind_addresses": bind, "x_forwarded": True,
             "resources": [{"names": w.resources, "compress": False}]},
            {"type": "metrics", "port": w.metrics_port, "bind_addresses": bind},
        ],
    }  # fmt: skip
    if w.kind == "media_repository":
        config["enable_media_repo"] = True  # over the shared config's False
    return config


def routes(ws: list[Worker]) -> list[tuple[str, str]]:
    """(path regex, upstream name) for nginx, in the order nginx must try them."""
    kinds = {w.kind for w in ws}
    found = []
    if "media_repository" in kinds:
        found += [(r, "matrix_synapse_media") for r in MEDIA_ROUTES]
    if "generic" in kinds:
        found += [(r, "matrix_synapse_sync") for r in SYNC_ROUTES]
        found += [(r, "matrix_synapse_federation_in") for r in INBOUND_FEDERATION_ROUTES]
        found += [(r, "matrix_synapse_generic") for r in GENERIC_ROUTES]
    return found


def upstreams(ws: list[Worker], endpoint) -> dict[str, dict]:
    """nginx upstreams of the workers: name -> {balance: nginx directive or "", servers: [host:port]}.

    `endpoint(host, port)` is how the proxy reaches that Synapse host on that port. Sync sticks to one worker per
    access token, inbound federation to one per sending server (both as Synapse's docs advise).
    """
    generic = [endpoint(w.host, w.port) for w in ws if w.kind == "generic"]
    media = [endpoint(w.host, w.port) for w in ws if w.kind == "media_repository"]
    found = {}
    if generic:
        found["matrix_synapse_generic"] = {"balance": "", "servers": generic}
        found["matrix_synapse_sync"] = {"balance": "hash $http_authorization consistent;", "servers": generic}
        found["matrix_synapse_federation_in"] = {"balance": "hash $remote_addr consistent;", "servers": generic}
    if media:
        found["matrix_synapse_media"] = {"balance": "", "servers": media}
    return found
