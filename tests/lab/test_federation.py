"""Two homeservers that federate: `LAYOUT=pair make lab`, lab.test and peer.test, each a whole deployment of
its own (inventories/lab.py, inventories/lab_peer.py) with its own MAS, nginx and ACME certificate.

Federation goes the real way: each Synapse finds the other through `/.well-known/matrix/server` on the
server name's host, then talks to the delegated `matrix.<site>:443` through the other's nginx over TLS,
trusting only the lab's ACME root (synapse_federation_ca_certificates). The users are real clients
(matrix-nio) on this machine, which verify the lab's certificates too.
"""

import asyncio
import socket
import ssl
import subprocess
import sys

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from nio import AsyncClient, InviteMemberEvent, JoinResponse, LoginResponse, RoomMessageText, RoomSendResponse

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from tests.support.lab import LAB_SETTINGS, ROOT, sh

pytestmark = pytest.mark.lab

SITES = list(lab.SITES)  # lab.test, peer.test


@pytest.fixture(scope="module")
def pair():
    lab.down()
    LAB_SETTINGS.unlink(missing_ok=True)
    hosts = lab.up("pair")
    prepare_release()
    deployed = subprocess.run([sys.executable, "-m", "matrix_deploy.lab", "deploy"], cwd=ROOT, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-4000:]
    deployments = {site: build(ROOT / inventory) for site, inventory in lab.SITES.items()}
    yield {h.site: h for h in hosts}, deployments
    lab.down()


class LabNames(AbstractResolver):
    """This machine's clients resolve the lab's public names as the lab hosts do (their /etc/hosts)."""

    def __init__(self, hosts):
        self.addresses = {name: h.address for h in hosts.values() for name in lab.public_names(h.site)}

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": self.addresses[host], "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self):
        pass


async def client(hosts, deployments, site) -> AsyncClient:
    """A logged-in matrix-nio client of `site`'s admin user, found the way clients find a homeserver."""
    tls = ssl.create_default_context(cafile=str(lab.LAB_DIR / "acme-root.pem"))
    c = AsyncClient(f"https://{site}", f"@admin:{site}", ssl=tls)
    c.client_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LabNames(hosts), ssl=tls))
    discovered = await c.discovery_info()
    assert discovered.homeserver_url.rstrip("/") == f"https://matrix.{site}", discovered
    c.homeserver = discovered.homeserver_url.rstrip("/")
    login = await c.login(deployments[site].secrets["admin_password"], device_name="federation test")
    assert isinstance(login, LoginResponse), login
    return c


async def sync_until(c: AsyncClient, found, what: str, seconds: float = 90):
    """Sync until `found(response)` returns something; fail naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    since = None
    while loop.time() < deadline:
        response = await c.sync(timeout=3000, since=since)
        since = getattr(response, "next_batch", since)
        result = found(response)
        if result:
            return result
    pytest.fail(f"{c.user_id} never saw {what} within {seconds:.0f}s")


def test_a_user_invites_a_user_of_the_other_server_who_joins_and_speaks(pair):
    hosts, deployments = pair

    async def conversation():
        alice = await client(hosts, deployments, "lab.test")
        bob = await client(hosts, deployments, "peer.test")
        try:
            room = (await alice.room_create(name="across the lab")).room_id
            invited = await alice.room_invite(room, bob.user_id)
            assert getattr(invited, "transport_response", None) is not None and invited.transport_response.ok, invited

            def invite(response):
                rooms = getattr(getattr(response, "rooms", None), "invite", {})
                return room in rooms and any(isinstance(e, InviteMemberEvent) for e in rooms[room].invite_state)

            await sync_until(bob, invite, f"the invite to {room} over federation")
            joined = await bob.join(room)
            assert isinstance(joined, JoinResponse), joined
            words = "hello from peer.test, over federation"
            sent = await bob.room_send(room, "m.room.message", {"msgtype": "m.text", "body": words})
            assert isinstance(sent, RoomSendResponse), sent

            def heard(response):
                timeline = getattr(getattr(response, "rooms", None), "join", {}).get(room)
                return timeline and [
                    e for e in timeline.timeline.events
                    if isinstance(e, RoomMessageText) and e.sender == bob.user_id and e.body == words
                ]  # fmt: skip

            await sync_until(alice, heard, f"{bob.user_id}'s message")
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(conversation())


def test_each_server_fetched_the_others_keys_through_its_delegated_name(pair):
    hosts, _ = pair
    for site, host in hosts.items():
        (other,) = [s for s in SITES if s != site]
        fetched = sh(
            host, "runuser -u postgres -- psql -d synapse -Atc 'SELECT DISTINCT server_name FROM server_keys_json'"
        )
        assert other in fetched.split(), (site, fetched)
        # The way it found the other: the well-known on the other's server name host, then federation at
        # matrix.<other>: both in the other proxy's access log, asked from this host's address.
        log = sh(hosts[other], "cat /var/log/nginx/access.log")
        asked = [line for line in log.splitlines() if line.startswith(host.address + " ")]
        assert any("GET /.well-known/matrix/server " in line for line in asked), (site, log[-2000:])
        assert any("/_matrix/key/v2/server" in line for line in asked), (site, log[-2000:])
        assert any(" /_matrix/federation/" in line for line in asked), (site, log[-2000:])
