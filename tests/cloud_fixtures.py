"""Fixtures for the cloud tests: a real PostgreSQL (emsbms/cloud/pgserver.py) and fresh databases.

Load them in a test module with ``pytest_plugins = ["tests.cloud_fixtures"]``.

- `pg`: one `PgServer` for the whole session (its `url` is the service role's database `emsbms`,
  `admin_url` the superuser's; `url_for(name)`/`admin_url_for(name)` for another database).
- `cloud_db`: the service role's URL of a new database, migrated, for one test (dropped after it),
  so tests never see each other's rows. `pg.admin_url_for(cloud_db.rsplit("/", 1)[1])` checks as
  the superuser.

Without PostgreSQL the tests skip, unless EMSBMS_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from emsbms.cloud.database import migrate
from emsbms.cloud.pgserver import PgServer, postgres_path


def require_postgres() -> None:
    if postgres_path() is None:
        if os.environ.get("EMSBMS_REQUIRE_POSTGRES") == "1":
            pytest.fail("EMSBMS_REQUIRE_POSTGRES=1 but PostgreSQL is not installed (apt-get install postgresql-15)")
        pytest.skip("PostgreSQL is not installed (Debian package postgresql-15)")


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    require_postgres()
    server = PgServer(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def cloud_db(pg: PgServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(name)
    try:
        migrate(url)
        yield url
    finally:
        pg.drop_database(name)
