"""Where an edge's rules come from: the site file's `[[rule]]` tables, or the `rules` of the last
configuration applied from the cloud (they replace the file's, as its devices do), plus the
default rules of the profiles in use (per device: ``*/`` is the device itself).

`start_alarms` builds and starts the runner for `emsbms run`, wired to the uplink when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from emsbms.alarms.applied import stored_rules
from emsbms.alarms.engine import Transition
from emsbms.alarms.expr import AlarmRuleError
from emsbms.alarms.rules import Rule, parse_rule, parse_rules
from emsbms.alarms.runner import AlarmRunner
from emsbms.edge import Edge
from emsbms.edge.events import Event
from emsbms.profile.models import Profile
from emsbms.site import Site


def site_rules(site: Site) -> list[Rule]:
    """The `[[rule]]` tables of a site, parsed; errors name the file, the table's index and the key."""
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(site.rules):
        try:
            rule = parse_rule(raw, i)
        except AlarmRuleError as e:
            raise AlarmRuleError(f"{site.label}: [[rule]] #{i + 1}: {e}") from None
        if rule.name in seen:
            raise AlarmRuleError(f"{site.label}: [[rule]] #{i + 1}: key 'name': {rule.name!r} is used by"
                                 f" [[rule]] #{seen[rule.name] + 1} too; names are unique per site")
        seen[rule.name] = i
        rules.append(rule)
    return rules


def profile_rules(raws: Sequence[Mapping[str, Any]], device: str, profile: str) -> list[dict[str, Any]]:
    """A profile's default rules applied to one device: ``*/`` becomes ``<device>/`` and the name
    ``<name>`` becomes ``<name>-<device>`` (one instance per device, named after it)."""
    out = []
    for raw in raws:
        item = dict(raw)
        for key in ("expression", "clear_expression"):
            if isinstance(item.get(key), str):
                item[key] = item[key].replace("*/", f"{device}/")
        item["name"] = f"{item.get('name')}-{device}"
        out.append(item)
    try:
        parse_rules(out)
    except AlarmRuleError as e:
        raise AlarmRuleError(f"profile {profile!r} (device {device}): {e}") from None
    return out


def configured_rules(site: Site, db_path: str | Path, profiles: Mapping[str, Profile] | None = None) -> list[Rule]:
    """The rules an edge runs: the cloud's applied ones if any, else the site file's; then the default
    rules of each device's profile (`profiles` by device name), applied to that device."""
    stored = stored_rules(db_path)
    rules = parse_rules(stored) if stored is not None else site_rules(site)
    return [*rules, *default_rules(site, profiles or {}, {r.name for r in rules})]


def default_rules(site: Site, profiles: Mapping[str, Profile], taken: set[str]) -> list[Rule]:
    """The profiles' default rules, one set per device (`profile_rules`); a name clash is refused."""
    out: list[Rule] = []
    for d in site.devices:
        p = profiles.get(d.name)
        if p is None or not p.model.rules:
            continue
        for i, raw in enumerate(profile_rules(p.model.rules, d.name, p.name)):
            rule = parse_rule(raw, i)
            if rule.name in taken:
                raise AlarmRuleError(f"profile {p.name!r} (device {d.name}): rule {rule.name!r} expected a name"
                                     " no other rule of the site has, found it taken")
            taken.add(rule.name)
            out.append(rule)
    return out


class Sink(Protocol):
    """What the uplink offers the runner (emsbms.uplink.link.EdgeUplink)."""

    def post_transition(self, t: Transition) -> None: ...
    def post_event(self, e: Event) -> None: ...
    def attach_alarms(self, runner: AlarmRunner) -> None: ...


def start_alarms(edge: Edge, db_path: str | Path, link: Sink | None = None,
                 on_event: Callable[[Event], None] | None = None) -> AlarmRunner:
    """The runner of `emsbms run`, started: transitions and events to the uplink when there is one."""
    rules = configured_rules(edge.site, db_path, edge.profiles)
    runner = AlarmRunner(edge, rules, db_path,
                         on_transition=link.post_transition if link is not None else None,
                         on_event=link.post_event if link is not None else on_event)
    runner.defaults = default_rules(edge.site, edge.profiles, set())  # kept when the cloud replaces the rules
    if link is not None:
        link.attach_alarms(runner)
    return runner.start()
