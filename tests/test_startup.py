"""Issue 13: start-up is lazy. `emsbms --help` and `import emsbms` load neither the edge, the database,
nor the profile engine's libraries; every command still loads when it runs; loading a profile still
runs its protocol check whatever imported the loader. No timing is asserted: which modules load is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from emsbms.cli import COMMANDS, app

HEAVY = ("emsbms.edge", "emsbms.db", "emsbms.site", "emsbms.profile.models", "emsbms.profile.loader", "sqlite_utils",
         "numpy", "cantools", "canopen", "pydantic", "can", "rich")


def modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running `code` (SystemExit included)."""
    script = f"import sys, json\ntry:\n    {code}\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_help_loads_no_heavy_module() -> None:
    loaded = modules_after("sys.argv = ['emsbms', '--help']; from emsbms.cli import main; main()")
    assert [m for m in HEAVY if m in loaded] == []
    assert "emsbms.cli.read" not in loaded and "emsbms.cli.common" in loaded


def test_import_emsbms_is_lazy_and_the_public_names_still_import() -> None:
    assert [m for m in HEAVY if m in modules_after("import emsbms")] == []
    code = ("from emsbms import Edge, Reading, load_profile, __all__; import emsbms;"
            " assert Edge.__name__ == 'Edge' and Reading._fields[0] == 'value';"
            " assert all(hasattr(emsbms, n) for n in __all__)")
    assert "emsbms.edge.edge" in modules_after(code)


def test_a_profile_loaded_first_thing_still_runs_its_protocol_check() -> None:
    code = ("from emsbms.profile.loader import load_profile; load_profile('pylon-lv');"
            " from emsbms.profile.checks import _CHECKS; print(json.dumps(sorted(_CHECKS)))")
    script = f"import json\n{code}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == ["canopen", "dbc", "j1939"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_listed_command_loads_and_takes_the_global_options(name: str) -> None:
    r = CliRunner().invoke(app, [name, "--help"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"Usage: emsbms {name} ")
    assert "--db FILE" in r.stdout and "--debug" in r.stdout and "-v, --verbose" in r.stdout
