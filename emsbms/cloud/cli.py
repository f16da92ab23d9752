"""`emsbms cloud ...`: the cloud service's commands (`org add`, `migrate`; `serve` joins them).

Loaded by the main CLI only when `emsbms cloud` runs. It needs the `cloud` extra: without psycopg
every subcommand says so and exits 2, and the edge's commands are untouched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer

from emsbms.errors import ConfigError, EmsbmsError

P = ParamSpec("P")
R = TypeVar("R")

USAGE = 2  # emsbms.cli.common.ExitCode.USAGE: bad input (a name, an existing organisation, no extra)
FAILURE = 1  # ExitCode.FAILURE: anything else (the database unreachable, ...)
EXTRA = "emsbms cloud needs the cloud extra: pip install 'emsbms[cloud]'"

app = typer.Typer(help="The cloud service: database, organisations, ingest and API.", no_args_is_help=True)
org_app = typer.Typer(help="Organisations (tenants) and their API tokens.", no_args_is_help=True)
app.add_typer(org_app, name="org")

Database = Annotated[str, typer.Option("--database", metavar="URL", envvar="EMSBMS_CLOUD_DATABASE",
                                       help="postgresql://user:password@host:port/db (the service role)")]


@app.callback()
def cloud() -> None:
    """The cloud service: database, organisations, ingest and API."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        typer.echo(f"error: {EXTRA}", err=True)
        raise typer.Exit(USAGE) from None


def cloud_errors(func: Callable[P, R]) -> Callable[P, R]:
    """`error: ...` on stderr: exit 2 for bad input (ConfigError), 1 for the rest (a database error)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import psycopg

        try:
            return func(*args, **kwargs)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(USAGE) from e
        except psycopg.OperationalError as e:
            typer.echo(f"error: cannot use the database (--database): {' '.join(str(e).split())}", err=True)
            raise typer.Exit(FAILURE) from e
        except (EmsbmsError, psycopg.Error) as e:
            typer.echo(f"error: {type(e).__name__}: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(FAILURE) from e

    return wrapper


@app.command("migrate")
@cloud_errors
def migrate_command(database: Database) -> None:
    """Apply the schema migrations the database lacks (safe to run twice, or from two processes)."""
    from emsbms.cloud.database import migrate

    applied = migrate(database)
    typer.echo(f"applied migrations {', '.join(map(str, applied))}" if applied else "the schema is up to date")


@org_app.command("add")
@cloud_errors
def org_add(
    org: Annotated[str, typer.Argument(metavar="ORG", help="the organisation: 1-64 of a-z 0-9 - _ .")],
    database: Database,
    as_json: Annotated[bool, typer.Option("--json", help='print {"org": ..., "token": ...}')] = False,
) -> None:
    """Create an organisation (migrating first) and print its API token, which is shown only once."""
    from emsbms.cloud import database as cloud_db

    cloud_db.check_org_name(org)
    cloud_db.migrate(database)
    with cloud_db.Database(database, min_size=1, max_size=1) as db:
        token = cloud_db.add_org(db, org)
    if as_json:
        typer.echo(json.dumps({"org": org, "token": token}))
    else:
        typer.echo(f"organisation {org} created; its API token (shown once): {token}")


@app.command("ingest")
@cloud_errors
def ingest_command(
    database: Database,
    broker: Annotated[str, typer.Option("--broker", metavar="URL", envvar="EMSBMS_CLOUD_BROKER",
                                        help="mqtt://user:password@host:port (a user that may read ems/#)")],
    group: Annotated[str, typer.Option("--group", help="the shared subscription's group")] = "ingest",
    client_id: Annotated[str | None, typer.Option("--client-id", help="fixed and unique per process (its"
                                                  " persistent session); default emsbms-GROUP-HOSTNAME")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="messages per transaction")] = 1000,
    batch_ms: Annotated[float, typer.Option("--batch-ms", min=0, help="longest wait to fill a batch")] = 50.0,
    gap_grace_s: Annotated[float, typer.Option("--gap-grace-s", min=0, help="a seq gap open this long is"
                                               " a data_loss event")] = 30.0,
) -> None:
    """Run one more ingest process (scale-out: several share the subscription) until SIGTERM or Ctrl-C."""
    from emsbms.cloud.ingest import run_ingest

    run_ingest(database, broker, group=group, client_id=client_id, report=typer.echo, batch_size=batch_size,
               batch_ms=batch_ms, gap_grace_s=gap_grace_s)


@app.command("serve")
@cloud_errors
def serve_command(
    database: Database,
    broker: Annotated[str, typer.Option("--broker", metavar="URL", envvar="EMSBMS_CLOUD_BROKER",
                                        help="mqtt://user:password@host:port (the service's broker user)")],
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="the HTTP API's address")]
    = "127.0.0.1:8080",
) -> None:
    """Migrate, then serve the HTTP API with ingest and the command publisher until SIGTERM or Ctrl-C."""
    import logging

    from emsbms.cloud.service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(database, broker, listen)


@app.command("demo")
@cloud_errors
def demo_command(
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="the dashboard's and API's address")]
    = "127.0.0.1:8080",
    as_json: Annotated[bool, typer.Option("--json", help='print {"url", "token", "org", "site", "folder", "pids"}'
                                          " as one line")] = False,
) -> None:
    """PostgreSQL, Mosquitto, the service, an organisation and a simulated site's edge on loopback, until Ctrl-C."""
    from emsbms.cloud.demo import run_demo

    code = run_demo(listen, as_json)
    if code:
        raise typer.Exit(code)
