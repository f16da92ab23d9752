"""The SocketCAN tier from the host: boot the VM of tools/vm/run.py once, run tests/socketcan inside it.

Skips, with the reason, when the VM cannot start here (no qemu, no kernel: `bash tools/vm/prepare.sh`;
not root); with EMSBMS_REQUIRE_SOCKETCAN=1 (set by .ci/run) that is a failure instead.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shlex
import socket
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
TIER = REPO / "tests" / "socketcan"
VM_TIMEOUT_S = 900.0  # the whole tier takes ~2 min here; a hung guest is killed after this


def load_harness() -> ModuleType:
    """tools/vm/run.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("emsbms_vm_run", REPO / "tools" / "vm" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def tier_tests() -> set[str]:
    """Names of the test functions in tests/socketcan, read from the source."""
    names = set()
    for path in TIER.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                  and node.name.startswith("test_")}
    return names


def host_has_socketcan() -> bool:
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except (OSError, AttributeError):
        return False
    return True


def junit_results(path: Path) -> dict[str, str]:
    """Test name -> passed, failed, error or skipped (with the message), from a JUnit XML report."""
    results: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = f"{child.tag}: {child.get('message', '')}"
        results[case.get("name", "?")] = status
    return results


def skip_or_fail(reason: str) -> None:
    if os.environ.get("EMSBMS_REQUIRE_SOCKETCAN") == "1":
        pytest.fail(f"the SocketCAN tier must run here (EMSBMS_REQUIRE_SOCKETCAN=1) but cannot: {reason}")
    pytest.skip(f"SocketCAN tier not run: {reason}")


def test_socketcan_tier_in_vm(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    if os.environ.get("EMSBMS_IN_VM"):
        pytest.skip("already inside the VM")
    if host_has_socketcan():
        pytest.skip("this kernel has SocketCAN: tests/socketcan run directly, not in a VM")
    vm = load_harness()
    reason = vm.unavailable_reason()
    if reason:
        skip_or_fail(reason)
    expected = tier_tests()
    assert len(expected) >= 5, expected
    report = f"{vm.GUEST_IO}/junit.xml"
    command = (f"{shlex.quote(sys.executable)} -m pytest -m socketcan tests/socketcan -q -p no:cacheprovider"
               f" --junitxml={report} -o junit_family=xunit1")

    result = vm.run(command, timeout=VM_TIMEOUT_S, io_dir=tmp_path)

    record_property("vm_boot_s", result.boot_seconds)
    record_property("vm_total_s", result.seconds)
    tail = "\n".join(result.output.splitlines()[-40:])
    assert not result.timed_out, f"the VM was killed after {VM_TIMEOUT_S:g} s:\n{tail}"
    assert result.boot_seconds is not None, f"the VM did not boot: {result.errors}\n{result.boot_log[-2000:]}"
    junit = tmp_path / "junit.xml"
    assert junit.is_file(), f"no report from pytest in the VM (exit {result.returncode}):\n{tail}"
    results = junit_results(junit)
    summary = "\n".join(f"  {name}: {status}" for name, status in sorted(results.items()))
    print(f"SocketCAN tier in the VM: boot {result.boot_seconds:.1f} s, total {result.seconds:.1f} s\n{summary}")
    assert set(results) == expected, f"ran {sorted(results)}, expected {sorted(expected)}"
    failed = {name: status for name, status in results.items() if status != "passed"}
    assert not failed, f"in-VM tests not passed:\n{summary}\n{tail}"
    assert result.returncode == 0, f"pytest in the VM exited {result.returncode}:\n{tail}"
