"""Broker tenancy, live: clients, roles and ACLs in Mosquitto's dynamic security plugin.

`BrokerAdmin(url, username, password)` connects as the plugin's admin (paho-mqtt 2.x, MQTT 3.1.1,
TCP_NODELAY), sends commands as JSON to `$CONTROL/dynamic-security/v1` and waits for the answer with
the same correlation id on `.../response`. A command the broker refuses raises `BrokerAdminError`
naming the command and the broker's error text.

Each site's edge is a client `{org}.{site}` with a random password, tied to no client id, holding
one role `ems-site/{org}/{site}`: publish under `ems/{org}/{site}/#` except its `cmd` and `config`;
subscribe to and receive only its `cmd`, `config` and `rebirth`. The service's client holds the role
`ems-service`. The default ACL access denies everything else.

The plugin kicks every client whose roles or roles' ACLs change (this admin too): commands go with
QoS 0 (paho never resends one after a kick), and changes read the state and apply only what differs.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.errors import EmsbmsError

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = f"{CONTROL}/response"
SERVICE_ROLE = "ems-service"
Acl = tuple[str, str, int, bool]  # (acltype, topic, priority, allow)

SERVICE_ACLS: frozenset[Acl] = frozenset({
    ("subscribePattern", "ems/#", 0, True),
    ("subscribePattern", "$share/+/ems/#", 0, True),  # ingest's shared subscription
    ("publishClientReceive", "ems/#", 0, True),
    ("publishClientSend", "ems/+/+/cmd", 0, True),
    ("publishClientSend", "ems/+/+/config", 0, True),
    ("publishClientSend", "ems/+/+/rebirth", 0, True),
})
DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                  "unsubscribe": True}


class BrokerAdminError(EmsbmsError):
    """The broker refused a dynamic security command, or did not answer it."""


class _Lost(BrokerAdminError):
    """The connection dropped before the answer came (the plugin kicks clients whose roles change)."""


def site_username(org: str, site: str) -> str:
    return f"{org}.{site}"


def site_role(org: str, site: str) -> str:
    return f"ems-site/{org}/{site}"  # '/' never occurs in a topic level: one name per (org, site)


def site_acls(org: str, site: str) -> frozenset[Acl]:
    base = f"ems/{org}/{site}"
    return frozenset({
        ("publishClientSend", f"{base}/#", 0, True),
        ("publishClientSend", f"{base}/cmd", 10, False),  # the higher priority is checked first
        ("publishClientSend", f"{base}/config", 10, False),
        *((kind, f"{base}/{t}", 0, True) for kind in ("subscribeLiteral", "publishClientReceive")
          for t in ("cmd", "config", "rebirth")),
    })


def _check_level(field: str, value: str) -> None:
    if not value or any(c in value for c in "/+#") or value.startswith("$"):
        raise BrokerAdminError(f"{field}: expected one MQTT topic level (not empty, no '/', '+', '#', no"
                               f" leading '$'), found {value!r}")


class BrokerAdmin:
    """The service's admin connection to the dynamic security plugin (see the module docstring)."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise BrokerAdminError(f"broker url: expected mqtt://host[:port], found {url!r}")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 1883, timeout
        self._cond = threading.Condition()
        self._ready = False  # connected and subscribed to the responses
        self._refused: str | None = None
        self._answers: dict[str, dict[str, Any]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"emsbms-admin-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=4)
        self.client.on_socket_open = self._socket_open
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_subscribe = self._subscribed
        self.client.on_message = self._message
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        try:
            self._wait_ready()
        except BrokerAdminError:
            self.close()
            raise

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> BrokerAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _socket_open(client: mqtt.Client, userdata: object, sock: Any) -> None:
        raw = getattr(sock, "_sock", sock)
        if isinstance(raw, socket.socket):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _connected(self, client: mqtt.Client, userdata: object, flags: object, reason: Any,
                   properties: object) -> None:
        if getattr(reason, "is_failure", False):
            with self._cond:
                self._refused = str(reason)
                self._cond.notify_all()
            return
        client.subscribe(RESPONSE, qos=1)

    def _subscribed(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[Any],
                    properties: object) -> None:
        with self._cond:
            if any(getattr(r, "is_failure", False) for r in reasons):
                self._refused = f"subscription to {RESPONSE} refused (is this the plugin's admin client?)"
            else:
                self._ready = True
            self._cond.notify_all()

    def _disconnected(self, client: mqtt.Client, userdata: object, flags: object, reason: Any,
                      properties: object) -> None:
        with self._cond:
            self._ready = False
            self._cond.notify_all()

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            for answer in responses:
                if isinstance(answer, dict) and isinstance(answer.get("correlationData"), str):
                    self._answers[answer["correlationData"]] = answer
            self._cond.notify_all()

    def _wait_ready(self) -> None:
        with self._cond:  # a kick is followed by a reconnect and a new subscription
            self._cond.wait_for(lambda: self._ready or self._refused is not None, self.timeout)
            if self._refused is not None:
                raise BrokerAdminError(f"broker {self.host}:{self.port} refused the admin client: {self._refused}")
            if not self._ready:
                raise BrokerAdminError(f"broker {self.host}:{self.port}: no admin connection within"
                                       f" {self.timeout:g} s")

    def command(self, name: str, **fields: Any) -> dict[str, Any]:
        """Run one dynsec command; its `data` (empty if none). Raises `BrokerAdminError` on refusal."""
        self._wait_ready()
        cid = uuid.uuid4().hex
        body = json.dumps({"commands": [{"command": name, **fields, "correlationData": cid}]})
        with self._cond:
            self.client.publish(CONTROL, body, qos=0)  # never resent by paho after a kick
            self._cond.wait_for(lambda: cid in self._answers or not self._ready, self.timeout)
            answer = self._answers.pop(cid, None)
        what = " ".join([name, *(str(fields[k]) for k in ("username", "rolename") if k in fields)])
        if answer is None:
            raise _Lost(f"dynamic security command {what}: no answer from {self.host}:{self.port} within"
                        f" {self.timeout:g} s (the connection dropped, or the plugin is not loaded)")
        if "error" in answer:
            raise BrokerAdminError(f"dynamic security command {what} failed: {answer['error']}")
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    def _get(self, name: str, key: str, **fields: Any) -> dict[str, Any] | None:
        """The `data[key]` of a get command, or None if the broker has no such client or role."""
        try:
            found = self.command(name, **fields).get(key)
        except BrokerAdminError as e:  # "Client not found", "Role not found"
            if "not found" in str(e) and not isinstance(e, _Lost):
                return None
            raise
        return found if isinstance(found, dict) else {}

    def _role_acls(self, rolename: str) -> frozenset[Acl] | None:
        role = self._get("getRole", "role", rolename=rolename)
        if role is None:
            return None
        return frozenset((a["acltype"], a["topic"], int(a.get("priority", 0)), bool(a["allow"]))
                         for a in role.get("acls", []))

    def _converge_role(self, rolename: str, wanted: frozenset[Acl]) -> None:
        """Create the role, or change its ACLs to exactly `wanted` (a change kicks its holders)."""
        current = self._role_acls(rolename)
        if current is None:
            self.command("createRole", rolename=rolename, acls=[
                {"acltype": k, "topic": t, "priority": p, "allow": a} for k, t, p, a in sorted(wanted)])
            return
        for kind, topic, _, _ in sorted(current - wanted):
            self.command("removeRoleACL", rolename=rolename, acltype=kind, topic=topic)
        for kind, topic, priority, allow in sorted(wanted - current):
            self.command("addRoleACL", rolename=rolename, acltype=kind, topic=topic, priority=priority, allow=allow)

    def _converge(self, step: Callable[[], None], attempts: int = 4) -> None:
        """Run `step` until it completes; a dropped answer (a kick) means: read the state again."""
        for _ in range(attempts - 1):
            try:
                return step()
            except _Lost:
                continue
        step()

    def ensure_defaults(self) -> None:
        """Default ACL access: deny publish, receive and subscribe to whoever no role allows."""
        current = {a["acltype"]: a["allow"] for a in self.command("getDefaultACLAccess").get("acls", [])}
        if current != DEFAULT_ACCESS:
            self.command("setDefaultACLAccess", acls=[{"acltype": k, "allow": v} for k, v in DEFAULT_ACCESS.items()])

    def ensure_service_role(self, username: str) -> None:
        """The service's client `username` (which must exist) holds `ems-service`; safe at every start."""

        def step() -> None:
            self.ensure_defaults()
            self._converge_role(SERVICE_ROLE, SERVICE_ACLS)
            client = self._get("getClient", "client", username=username)
            if client is None:
                raise BrokerAdminError(f"ensure_service_role: the broker has no client {username!r}; create it"
                                       f" with mosquitto_ctrl dynsec createClient {username}")
            if SERVICE_ROLE not in {r.get("rolename") for r in client.get("roles", [])}:
                self.command("addClientRole", username=username, rolename=SERVICE_ROLE)

        self._converge(step)

    def add_site(self, org: str, site: str) -> tuple[str, str]:
        """A new client and role for the site's edge; its (username, password)."""
        _check_level("org", org)
        _check_level("site", site)
        username, rolename = site_username(org, site), site_role(org, site)
        if self._get("getClient", "client", username=username) is not None:
            raise BrokerAdminError(f"add_site: the broker already has a client {username!r} (org {org!r},"
                                   f" site {site!r}); remove the site first or set its password")
        self._converge(lambda: self._converge_role(rolename, site_acls(org, site)))  # nobody holds it yet
        password = secrets.token_urlsafe(24)
        try:
            self.command("createClient", username=username, password=password, roles=[{"rolename": rolename}],
                         textname=f"edge of {org}/{site}")
        except _Lost:
            client = self._get("getClient", "client", username=username)  # the answer was lost: look
            if client is None or rolename not in {r.get("rolename") for r in client.get("roles", [])}:
                self._remove_role(rolename)
                raise
        except BrokerAdminError:
            self._remove_role(rolename)  # nothing half-applied
            raise
        return username, password

    def remove_site(self, org: str, site: str) -> bool:
        """Delete the site's client (disconnecting its edge) and role; False if neither existed."""
        found = False
        try:
            self.command("deleteClient", username=site_username(org, site))
            found = True
        except BrokerAdminError as e:
            if "not found" not in str(e):
                raise
        return self._remove_role(site_role(org, site)) or found

    def _remove_role(self, rolename: str) -> bool:
        try:
            self.command("deleteRole", rolename=rolename)
        except BrokerAdminError as e:
            if "not found" not in str(e):
                raise
            return False
        return True

    def set_password(self, org: str, site: str, password: str | None = None) -> str:
        """A new password for the site's edge (random unless given); returns it."""
        password = password or secrets.token_urlsafe(24)
        self.command("setClientPassword", username=site_username(org, site), password=password)
        return password
