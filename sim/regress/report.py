"""What a regression reports: the JSON document, the summary table and JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitaccel.sim.regress.plan import Plan

__all__ = ["summary_document", "print_summary", "write_junit", "format_mismatch"]


def summary_document(plan: Plan, records: list[dict[str, Any]], *, duration_s: float) -> dict[str, Any]:
    """The ``--json`` document. ``total`` counts cases that ran; ``not_run`` lists the rest."""
    order = {(t.case, t.seed): i for i, t in enumerate(plan.tasks)}
    cases = sorted(records, key=lambda r: order.get((r["name"], r["seed"]), len(order)))
    passed = sum(1 for r in cases if r["result"] == "passed")
    return {
        "config": plan.config.name, "config_hash": plan.config.hash(), "simulator": plan.simulator,
        "quick": plan.quick, "seeds": plan.seeds, "vectors": plan.vectors,
        "total": len(cases), "passed": passed, "failed": len(cases) - passed,
        "not_run": [n.to_dict() for n in plan.not_run],
        "duration_s": round(duration_s, 2), "cases": cases,
    }


def format_mismatch(mismatch: Any) -> str:
    """``at [1, 2]: expected 5, got 7`` for a first-mismatch dict, else its text."""
    if isinstance(mismatch, dict) and {"position", "expected", "got"} <= mismatch.keys():
        return f"at {mismatch['position']}: expected {mismatch['expected']}, got {mismatch['got']}"
    return "" if mismatch is None else str(mismatch)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def print_summary(document: dict[str, Any], console: Console) -> None:
    """The summary table, then one copyable reproduce command per failure."""
    table = Table(title=f"vitaccel regress: config {document['config']} ({document['config_hash']}), "
                        f"{document['simulator']}", title_justify="left")
    for column, justify in (("test", "left"), ("seed", "right"), ("simulator", "left"),
                            ("cycles", "right"), ("result", "left"), ("first mismatch / error", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for record in document["cases"]:
        failed = record["result"] != "passed"
        detail = (format_mismatch(record["mismatch"]) or _first_line(record["message"])) if failed else ""
        table.add_row(escape(record["name"]), str(record["seed"]), record["simulator"],
                      "" if record["cycles"] is None else str(record["cycles"]),
                      "[red]FAIL[/red]" if failed else "[green]pass[/green]", escape(detail))
    for skipped in document["not_run"]:
        table.add_row(escape(skipped["name"]), "", document["simulator"], "",
                      f"[yellow]{skipped['status']}[/yellow]", escape(skipped["reason"]))
    console.print(table)
    failures = [r for r in document["cases"] if r["result"] != "passed"]
    if failures:
        console.print("[bold]reproduce a failure alone:[/bold]")
        for record in failures:
            console.print(f"  {record['reproduce']}", markup=False, highlight=False, soft_wrap=True)
    verdict = "[green]PASSED[/green]" if not failures and document["total"] else "[red]FAILED[/red]"
    console.print(f"{verdict} {document['passed']}/{document['total']} passed, {document['failed']} failed, "
                  f"{len(document['not_run'])} not run, {document['duration_s']} s")


def write_junit(document: dict[str, Any], path: str | Path) -> None:
    """JUnit XML that CI systems read: one ``testcase`` per case and seed.

    Cases that could not run are ``skipped`` with their reason; failures carry the first
    mismatch or error as the message and the reproduce command in the text.
    """
    suite_name = f"vitaccel.regress.{document['config']}.{document['simulator']}"
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {
        "name": suite_name, "tests": str(document["total"] + len(document["not_run"])),
        "failures": str(document["failed"]), "errors": "0", "skipped": str(len(document["not_run"])),
        "time": f"{document['duration_s']:.3f}"})
    properties = ET.SubElement(suite, "properties")
    for key in ("config", "config_hash", "simulator", "quick"):
        ET.SubElement(properties, "property", {"name": key, "value": str(document[key])})
    for record in document["cases"]:
        case = ET.SubElement(suite, "testcase", {
            "classname": suite_name, "name": f"{record['name']}[seed={record['seed']}]",
            "time": f"{record['duration_s']:.3f}"})
        if record["result"] != "passed":
            failure = ET.SubElement(case, "failure", {
                "message": format_mismatch(record["mismatch"]) or _first_line(record["message"], 500)})
            failure.text = f"{record['message']}\nreproduce: {record['reproduce']}"
        else:
            ET.SubElement(case, "system-out").text = f"cycles={record['cycles']}"
    for skipped in document["not_run"]:
        case = ET.SubElement(suite, "testcase", {"classname": suite_name, "name": skipped["name"], "time": "0"})
        ET.SubElement(case, "skipped", {"message": f"{skipped['status']}: {skipped['reason']}"})
    ET.indent(suites)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
