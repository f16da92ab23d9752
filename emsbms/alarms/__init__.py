"""The edge's alarm engine: rules over channels (docs/alarms.md).

`parse_rules` checks rules at load; `AlarmEngine.evaluate` steps their instances (pure, time as an
argument); `AlarmStore` keeps the instances in the edge database across restarts.
"""

from emsbms.alarms.engine import (
    AlarmEngine,
    AlarmError,
    AlarmState,
    AlarmStatus,
    Transition,
    ack_target,
    state_address,
)
from emsbms.alarms.expr import AlarmRuleError, parse_expression
from emsbms.alarms.rules import Rule, Severity, parse_rules
from emsbms.alarms.store import AlarmStore

__all__ = ["AlarmEngine", "AlarmError", "AlarmRuleError", "AlarmState", "AlarmStatus", "AlarmStore", "Rule",
           "Severity", "Transition", "ack_target", "parse_expression", "parse_rules", "state_address"]
