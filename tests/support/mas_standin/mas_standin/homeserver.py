"""Calls to Synapse, as MAS 1.22.0 makes them (crates/matrix-synapse/src/{modern,legacy}.rs).

Every call goes to `matrix.endpoint` joined with the path (URL-join rules, like MAS's
`Url::join`), with `Authorization: Bearer <matrix shared secret>`.

`matrix.kind: synapse` / `synapse_modern` (Synapse >= 1.135) use Synapse's MAS API:
  GET  /_synapse/mas/is_localpart_available?localpart=L      200, or M_USER_IN_USE/M_INVALID_USERNAME/M_EXCLUSIVE
  POST /_synapse/mas/provision_user {"localpart", "locked", ["set_displayname"]}   201 created / 200
  POST /_synapse/mas/upsert_device  {"localpart", "device_id", ["display_name"]}
  POST /_synapse/mas/delete_device  {"localpart", "device_id"}
  POST /_synapse/mas/sync_devices   {"localpart", "devices": [...]}
`synapse_legacy` uses Synapse's admin API (the shared secret is then msc3861's `admin_token`):
  GET  /_synapse/admin/v1/username_available?username=L      {"available": bool}
  PUT  /_synapse/admin/v2/users/@L:server  {"external_ids": [{"auth_provider": "oauth-delegated",
                                            "external_id": <sub>}], ["displayname"]}     201 / 200
  POST /_synapse/admin/v2/users/@L:server/devices {"device_id"}                        201
  PUT  /_synapse/admin/v2/users/@L:server/devices/D {"display_name"}
  DELETE /_synapse/admin/v2/users/@L:server/devices/D                                  200
  GET  /_synapse/admin/v2/users/@L:server/devices, POST .../delete_devices {"devices"}  (device sync)
`synapse_read_only` reads but never writes.
"""

import hmac
import json
import urllib.error
import urllib.parse
import urllib.request

from . import log
from .config import matrix as matrix_settings
from .config import shared_secret

UNAVAILABLE_ERRCODES = ("M_USER_IN_USE", "M_INVALID_USERNAME", "M_EXCLUSIVE")
# Loopback and lab addresses only: never route the shared secret through an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HomeserverError(Exception):
    def __init__(self, message: str, status: int | None = None, errcode: str | None = None):
        super().__init__(message)
        self.status, self.errcode = status, errcode


class SynapseConnection:
    kind = "synapse"

    def __init__(self, homeserver: str, endpoint: str, secret: str):
        self.homeserver, self.endpoint, self._secret = homeserver, endpoint, secret

    def mxid(self, localpart: str) -> str:
        return f"@{localpart}:{self.homeserver}"

    def localpart(self, mxid: str) -> str | None:
        suffix = f":{self.homeserver}"
        if mxid.startswith("@") and mxid.endswith(suffix):
            return mxid[1 : -len(suffix)]
        return None

    def verify_token(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._secret.encode())

    def _call(self, method: str, path: str, body=None, what: str = "call the homeserver"):
        url = urllib.parse.urljoin(self.endpoint, path)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._secret}")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", "mas-standin")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        log.debug("mas_matrix_synapse", f"{method} {url.split('?')[0]}")
        try:
            with _OPENER.open(request, timeout=10) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw.strip() else {})
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {}
            errcode = payload.get("errcode") if isinstance(payload, dict) else None
            detail = payload.get("error") if isinstance(payload, dict) else None
            raise HomeserverError(
                f"Failed to {what}: Synapse answered {error.code} {errcode or ''} {detail or ''}".rstrip()
                + f" ({method} {url.split('?')[0]})",
                status=error.code,
                errcode=errcode,
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise HomeserverError(
                f"Failed to {what}: could not reach the homeserver at {url.split('?')[0]}: {reason}"
            ) from None

    def is_localpart_available(self, localpart: str) -> bool:
        if not localpart.isascii():
            return False
        query = urllib.parse.urlencode({"localpart": localpart})
        try:
            self._call("GET", f"_synapse/mas/is_localpart_available?{query}", what="check localpart availability")
        except HomeserverError as error:
            if error.errcode in UNAVAILABLE_ERRCODES:
                return False
            raise
        return True

    def provision_user(self, localpart: str, sub: str, display_name: str | None = None, locked: bool = False) -> bool:
        body = {"localpart": localpart, "locked": locked}
        if display_name is not None:
            body["set_displayname"] = display_name
        status, _ = self._call("POST", "_synapse/mas/provision_user", body, what="provision user in Synapse")
        return status == 201

    def upsert_device(self, localpart: str, device_id: str, display_name: str | None = None) -> None:
        body = {"localpart": localpart, "device_id": device_id}
        if display_name is not None:
            body["display_name"] = display_name
        self._call("POST", "_synapse/mas/upsert_device", body, what="create device in Synapse")

    def delete_device(self, localpart: str, device_id: str) -> None:
        body = {"localpart": localpart, "device_id": device_id}
        self._call("POST", "_synapse/mas/delete_device", body, what="delete device in Synapse")

    def sync_devices(self, localpart: str, devices: set[str]) -> None:
        body = {"localpart": localpart, "devices": sorted(devices)}
        self._call("POST", "_synapse/mas/sync_devices", body, what="sync devices in Synapse")


class LegacySynapseConnection(SynapseConnection):
    kind = "synapse_legacy"

    def _user_path(self, localpart: str) -> str:
        return "_synapse/admin/v2/users/" + urllib.parse.quote(self.mxid(localpart), safe="")

    def is_localpart_available(self, localpart: str) -> bool:
        if not localpart.isascii():
            return False
        query = urllib.parse.urlencode({"username": localpart})
        try:
            _, body = self._call("GET", f"_synapse/admin/v1/username_available?{query}", what="check localpart")
        except HomeserverError as error:
            if error.errcode in UNAVAILABLE_ERRCODES:
                return False
            raise
        return bool(body.get("available"))

    def provision_user(self, localpart: str, sub: str, display_name: str | None = None, locked: bool = False) -> bool:
        body = {"external_ids": [{"auth_provider": "oauth-delegated", "external_id": sub}]}
        if display_name is not None:
            body["displayname"] = display_name
        status, _ = self._call("PUT", self._user_path(localpart), body, what="provision user in Synapse")
        if status not in (200, 201):
            raise HomeserverError(f"Unexpected HTTP code while provisioning user in Synapse: {status}", status)
        return status == 201

    def upsert_device(self, localpart: str, device_id: str, display_name: str | None = None) -> None:
        status, _ = self._call("POST", f"{self._user_path(localpart)}/devices", {"device_id": device_id},
                               what="create device in Synapse")  # fmt: skip
        if status != 201:
            raise HomeserverError(f"Unexpected HTTP code while creating device in Synapse: {status}", status)
        if display_name is not None:
            device = urllib.parse.quote(device_id, safe="")
            self._call("PUT", f"{self._user_path(localpart)}/devices/{device}", {"display_name": display_name},
                       what="update device display name in Synapse")  # fmt: skip

    def delete_device(self, localpart: str, device_id: str) -> None:
        device = urllib.parse.quote(device_id, safe="")
        self._call("DELETE", f"{self._user_path(localpart)}/devices/{device}", what="delete device in Synapse")

    def sync_devices(self, localpart: str, devices: set[str]) -> None:
        _, body = self._call("GET", f"{self._user_path(localpart)}/devices", what="query devices from Synapse")
        existing = {d["device_id"] for d in body.get("devices", []) if d.get("dehydrated") is not True}
        self._call("POST", f"{self._user_path(localpart)}/delete_devices", {"devices": sorted(existing - devices)},
                   what="delete devices from Synapse")  # fmt: skip
        for device_id in sorted(devices - existing):
            self.upsert_device(localpart, device_id)


class ReadOnlySynapseConnection(SynapseConnection):
    kind = "synapse_read_only"

    def provision_user(self, localpart, sub, display_name=None, locked=False) -> bool:
        log.warn("mas_matrix::readonly", "Not provisioning user: the homeserver connection is read-only",
                 localpart=localpart)  # fmt: skip
        return False

    def upsert_device(self, localpart, device_id, display_name=None) -> None:
        return None

    def delete_device(self, localpart, device_id) -> None:
        return None

    def sync_devices(self, localpart, devices) -> None:
        return None


def from_config(config: dict) -> SynapseConnection:
    m = matrix_settings(config)
    cls = {"synapse_legacy": LegacySynapseConnection, "synapse_read_only": ReadOnlySynapseConnection}.get(
        m["kind"], SynapseConnection
    )
    return cls(m["homeserver"], m["endpoint"], shared_secret(config))
