"""The rows every section of the GPU check returns, and the table, JSON and Markdown made of them.

A row is a correctness check (``ok`` True/False), a goal (``goal`` set: met or missed) or a number for
the record (``ok`` None). Only a failed correctness check makes the run fail; goals are reported.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

EXIT_OK = 0  # every correctness check passed (goals may still be missed: see the table)
EXIT_FAILED = 1  # a correctness check failed
EXIT_NO_CUDA = 77  # no CUDA device: nothing was checked (the conventional "skipped" code of test drivers)


@dataclass
class Row:
    """One line of the report. ``value``: what was measured, as text; ``data``: the same as numbers."""

    section: str
    name: str
    value: str
    ok: bool | None = None  # correctness: True/False; None: a measurement only
    goal: str = ""  # e.g. "<= 1.02x": then ``ok`` says whether the goal was met
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.ok is None:
            return "info"
        if self.goal:
            return "goal met" if self.ok else "goal missed"
        return "pass" if self.ok else "FAIL"


def check_row(section: str, name: str, passed: int, total: int, **data: Any) -> Row:
    """A correctness row over ``total`` cases of which ``passed`` passed (none at all: a failure)."""
    return Row(section, name, f"{passed}/{total} equal", ok=total > 0 and passed == total, data=data)


def goal_row(section: str, name: str, value: float, goal: float, unit: str = "x", **data: Any) -> Row:
    """A measured ratio against an upper bound."""
    ok = math.isfinite(value) and value <= goal
    return Row(section, name, f"{value:.3f}{unit}", ok=ok, goal=f"<= {goal:g}{unit}", data={"value": value, **data})


def info_row(section: str, name: str, value: str, **data: Any) -> Row:
    return Row(section, name, value, data=data)


@dataclass
class Report:
    """Everything one run found: the machine it ran on and the rows of every section."""

    environment: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    def extend(self, rows: Iterable[Row]) -> None:
        self.rows.extend(rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False and not r.goal]

    @property
    def goals_missed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False and r.goal]

    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def summary(self) -> str:
        checks = [r for r in self.rows if r.ok is not None and not r.goal]
        goals = [r for r in self.rows if r.goal]
        return (
            f"{len(checks) - len(self.failed)}/{len(checks)} checks passed, "
            f"{len(goals) - len(self.goals_missed)}/{len(goals)} goals met"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "started": self.started,
            "summary": self.summary(),
            "exit_code": self.exit_code(),
            "rows": [{**asdict(r), "status": r.status} for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=_plain)

    def header(self) -> str:
        env = self.environment
        return (
            f"gpu_check: {env.get('device_name', '?')} ({env.get('device', '?')}), torch {env.get('torch', '?')}, "
            f"CUDA {env.get('cuda', '-')}, started {self.started}, host load average {env.get('load_average', '?')}"
        )

    def to_markdown(self) -> str:
        lines = [f"`{self.header()}`", "", "| section | check | value | goal | status |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.section} | {_cell(r.name)} | {_cell(r.value)} | {r.goal} | {r.status} |")
        lines += ["", f"Summary: {self.summary()}.", ""]
        return "\n".join(lines)

    def print_table(self, console: Any = None) -> None:
        """The rows as a rich table, then the summary line."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = console or Console(width=200)
        table = Table(title=Text(self.header()), title_justify="left")
        for col in ("section", "check", "value", "goal", "status"):
            table.add_column(col, overflow="fold")
        styles = {"FAIL": "bold red", "goal missed": "yellow", "pass": "green", "goal met": "green"}
        for r in self.rows:
            cells = (Text(r.section), Text(r.name), Text(r.value), Text(r.goal))  # no markup: shapes hold brackets
            table.add_row(*cells, Text(r.status, style=styles.get(r.status, "")))
        console.print(table)
        console.print(f"{self.summary()}; exit code {self.exit_code()}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _plain(value: Any) -> Any:
    """JSON for what json does not know: dtypes, devices, tuples of those."""
    return str(value)


def group_counts(results: Sequence[tuple[str, bool]]) -> dict[str, tuple[int, int]]:
    """``[(group, passed)]`` -> ``{group: (passed, total)}``, groups in first-seen order."""
    out: dict[str, tuple[int, int]] = {}
    for group, passed in results:
        p, t = out.get(group, (0, 0))
        out[group] = (p + int(passed), t + 1)
    return out
