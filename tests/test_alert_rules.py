"""docs/prometheus-alerts.yml: valid rule-file YAML, one rule per alert the docs promise,
and only metrics crm-export exports (promtool is not on the build machine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from crm_export.metrics import METRIC_NAMES

RULES = Path(__file__).resolve().parents[1] / "docs" / "prometheus-alerts.yml"
# A histogram is queried through its _bucket, _count and _sum series.
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        found += group["rules"]
    return found


def metrics_used(expr: str) -> set[str]:
    return set(re.findall(r"\bcrm_export_[a-z_]+", expr))


def exported(name: str) -> bool:
    base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
    return name in METRIC_NAMES or base in METRIC_NAMES


def test_every_rule_is_well_formed_and_uses_exported_metrics_only() -> None:
    found = rules()
    assert found
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
        used = metrics_used(rule["expr"])
        assert used, f"{rule['alert']} uses no crm-export metric"
        assert all(exported(m) for m in used), (rule["alert"], used - set(METRIC_NAMES))


def test_the_four_alerts_the_issue_asks_for_are_there() -> None:
    by_name = {r["alert"]: r["expr"] for r in rules()}
    assert "> 3600" in by_name["CrmExportStreamPaused"]
    assert "crm_export_stream_pause_age_seconds" in by_name["CrmExportStreamPaused"]
    assert "> 0.05" in by_name["CrmExportRecordFailureRate"]
    assert "crm_export_last_success_timestamp_seconds" in by_name["CrmExportNoSuccessfulRun"]
    assert "> 90" in by_name["CrmExportOrgApiUsageHigh"]
