"""The figures of a fault run and their text: one row of the matrix (``RowResult``, the table of
``render_matrix``) and the long run (``FaultRunReport``, with its per-scenario table)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.faults.invariants import runs_per_call
from bench.faults.scenarios import BY_NAME, FaultRunConfig


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# ----- the matrix --------------------------------------------------------------------------


@dataclass
class RowResult:
    key: str
    number: str
    title: str
    containers: int = 0
    right: int = 0
    lost: int = 0
    stranded: int = 0
    duplicate_events: int = 0
    missing_events: int = 0
    calls_total: int = 0
    calls_max: int = 0
    bound_at_max: int = 0
    over_bound: int = 0
    runs: int | None = None
    runs_unknown: int = 0
    wall: float = 0.0
    settled: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def runs_per_call(self) -> float | None:
        return runs_per_call(self.runs, self.calls_total)

    @property
    def passed(self) -> bool:
        return not self.failures

    def cells(self) -> list[str]:
        ratio = self.runs_per_call
        return [
            f"{self.number} {self.key}",
            str(self.containers),
            str(self.right),
            str(self.lost),
            str(self.stranded),
            str(self.duplicate_events),
            f"{self.calls_max}/{self.bound_at_max}"
            + (f" ({self.over_bound} over)" if self.over_bound else ""),
            "unknown" if ratio is None else f"{ratio:.2f}",
            f"{self.wall:.1f}",
            "PASS" if self.passed else "FAIL",
        ]

    def render(self) -> str:
        lines = [f"{self.number} {self.key}: {self.title}"]
        lines.append("  " + "  ".join(f"{k} {v}" for k, v in self.figures.items()))
        lines.append(f"  settled: {self.settled}")
        lines += [f"  FAIL: {f}" for f in self.failures]
        lines += [f"    {d}" for d in self.details[:12]]
        if self.workdir is not None:
            lines.append(f"  logs: {self.workdir}")
        return "\n".join(lines)


HEADER = [
    "row",
    "containers",
    "final right",
    "lost",
    "stranded",
    "dup events",
    "calls max/bound",
    "runs/call",
    "wall s",
    "result",
]


def render_matrix(results: Sequence[RowResult]) -> str:
    lines = ["", table([HEADER] + [r.cells() for r in results]), ""]
    for r in results:
        lines.append(r.render())
    passed = all(r.passed for r in results)
    lines.append("")
    lines.append(
        "PASS" if passed else f"FAIL ({sum(not r.passed for r in results)} of {len(results)} rows)"
    )
    return "\n".join(lines)


# ----- the long run ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explained:
    container_id: str
    scenario: str
    reason: str
    answers: tuple[str, ...]


@dataclass
class ScenarioRow:
    n: int = 0
    right: int = 0
    explained: int = 0
    wrong: int = 0
    lost: int = 0
    calls: list[int] = field(default_factory=list)


@dataclass
class FaultRunReport:
    config: FaultRunConfig
    right: int = 0
    explained: list[Explained] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    duplicate_events: list[str] = field(default_factory=list)
    missing_events: list[str] = field(default_factory=list)
    stray_events: int = 0
    over_bound: list[str] = field(default_factory=list)
    calls_max: int = 0
    calls_mean: float = 0.0
    calls_total: int = 0
    over_max_checks: int = 0
    over_max_checks_by_cause: Counter[str] = field(default_factory=Counter)
    expected_starved: float = 0.0
    kills: int = 0
    unexpected_exits: list[tuple[int, int]] = field(default_factory=list)
    redis_restarts: int = 0
    redis_downtime: float = 0.0
    enqueue_outcomes: Counter[str] = field(default_factory=Counter)
    intake_written: int = 0
    dead_letters: int = 0
    intake_left: int = 0
    intake_pending: int = 0
    inflight_left: int = 0
    queue_left: int = 0
    reconciled: int = 0
    per_scenario: dict[str, ScenarioRow] = field(default_factory=dict)
    wall_time: float = 0.0
    workdir: Path | None = None

    @property
    def containers(self) -> int:
        return self.config.containers

    @property
    def passed(self) -> bool:
        return not (
            self.lost
            or self.wrong
            or self.late
            or self.duplicate_events
            or self.missing_events
            or self.stray_events
            or self.over_bound
            or self.dead_letters
        )

    def render(self) -> str:
        n = self.containers
        cfg = self.config
        why = Counter(e.reason for e in self.explained)
        lines = [
            "",
            "results",
            f"  containers                    {n}",
            f"  reached the expected state    {self.right} ({self.right / n:.2%})",
            f"  explained TIMED_OUT           {len(self.explained)}"
            + (f"  ({', '.join(f'{k} {v}' for k, v in sorted(why.items()))})" if why else "")
            + f"; model estimate of fault-starved (faults alone): {self.expected_starved:.2f}",
            f"  wrong                         {len(self.wrong)}",
            f"  lost (no final state)         {len(self.lost)}",
            f"  timed out with checks left    {len(self.late)} (started too late: overload)",
            f"  duplicate final events        {len(self.duplicate_events)} containers",
            f"  missing final events          {len(self.missing_events)}"
            f" (stray events {self.stray_events})",
            f"  API status calls / container  max {self.calls_max}, mean {self.calls_mean:.2f}, "
            f"total {self.calls_total}",
            f"    bound: {cfg.max_checks} checks + 1 per throttled answer (not a spent check) + 1"
            f" per dropped connection (aiohttp re-sends the GET once) + 1 per SIGKILLed run",
            f"    over {cfg.max_checks}: {self.over_max_checks} containers "
            + _counts(self.over_max_checks_by_cause)
            + f"; over the bound: {len(self.over_bound)}",
            f"  worker SIGKILLs {self.kills}, unexpected worker exits {len(self.unexpected_exits)}"
            + (
                f" (exit codes {sorted({c for _, c in self.unexpected_exits})})"
                if self.unexpected_exits
                else ""
            ),
            f"  redis restarts {self.redis_restarts} (down {self.redis_downtime:.2f} s in all)",
            f"  enqueue outcomes {dict(sorted(self.enqueue_outcomes.items()))}, intake entries "
            f"{self.intake_written}, dead letters {self.dead_letters}",
            f"  left over: intake {self.intake_left} (pending {self.intake_pending}), in flight "
            f"{self.inflight_left}, queued jobs {self.queue_left}; settled by the reconciler "
            f"{self.reconciled}",
            f"  wall time                     {self.wall_time:.1f} s",
            "",
            table(
                [
                    [
                        "scenario",
                        "expect",
                        "n",
                        "right",
                        "explained",
                        "wrong",
                        "lost",
                        "calls mean",
                        "calls max",
                    ]
                ]
                + [
                    [
                        name,
                        BY_NAME[name].expect_label,
                        str(r.n),
                        str(r.right),
                        str(r.explained),
                        str(r.wrong),
                        str(r.lost),
                        f"{sum(r.calls) / max(1, len(r.calls)):.2f}",
                        str(max(r.calls, default=0)),
                    ]
                    for name, r in self.per_scenario.items()
                ]
            ),
        ]
        for title, items in (
            ("wrong", self.wrong),
            ("lost", self.lost),
            ("timed out with checks left (overload)", self.late),
            ("duplicate events", self.duplicate_events),
            ("missing events", self.missing_events),
            ("over the call bound", self.over_bound),
        ):
            if items:
                lines.append(f"\n{title} (first 10):")
                lines += [f"  {item}" for item in items[:10]]
        if self.explained:
            lines.append(
                "\nexplained TIMED_OUT (first 10): container, scenario, why, the API's answers"
                " (X@2s: sent after the client's timeout)"
            )
            lines += [
                f"  {e.container_id} {e.scenario}: {e.reason}; {' '.join(e.answers)}"
                for e in self.explained[:10]
            ]
        if self.workdir is not None:
            lines.append(f"\nlogs kept in {self.workdir}")
        lines.append("\nPASS" if self.passed else "\nFAIL")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) + ")" if counter else ""
