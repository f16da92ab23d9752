"""The cloud service: PostgreSQL telemetry and configuration, ingest, the command API, tenancy.

Installed with the `cloud` extra (`pip install 'emsbms[cloud]'`: psycopg, FastAPI, uvicorn). The edge
never imports this package; it imports the uplink contract and the site and profile models.
"""
