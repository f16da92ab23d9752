"""The uplink: the edge's side of the MQTT link to the cloud (docs/uplink.md).

- `messages`: topics under ``ems/{org}/{site}/`` and the JSON payloads (pure: time is an argument);
  `TelemetryBatcher` turns registry updates into telemetry and health batches by exception.
- `outbox`: the store-and-forward SQLite outbox; a row is deleted only after the broker's PUBACK.
- `client`: the MQTT transport (paho-mqtt), `commands` and `config`: what comes down.

This package imports nothing on its own: import the module you need, so that the edge pays for
paho-mqtt only when a site has an ``[uplink]``.
"""
