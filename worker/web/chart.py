"""The console's small chart, as SVG geometry computed on the server (no script, no library). Pure.

Two strips over the last hour, one bar per minute: checks per minute (with the containers in
flight as a line), and final states per minute, failures stacked on successes. Each strip has
its unit, a y axis (0 and its maximum, gridlines) and the hour's times under the x axis (every
15 minutes, UTC); the legend's swatches are HTML next to it (readable at any width). The
viewBox is narrow (480) so that its 13-unit text stays readable on a 390 px screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.core.states import SUCCESS_STATES
from worker.ops.stats import MinuteStats

WIDTH = 480
LEFT = 40  # the y axis' labels
STRIP = 80
GAP = 40  # between the strips: the second one's unit
TOP = 22  # above the first strip: its unit
BOTTOM = 24  # under the second strip: the times
X_EVERY_MINUTES = 15


@dataclass(frozen=True, slots=True)
class Tick:
    pos: float  # y of a y tick, x of an x tick
    text: str

    @property
    def x(self) -> float:
        return self.pos

    @property
    def y(self) -> float:
        return self.pos


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    kind: str  # checks | ok | failed
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar] = field(default_factory=list)
    inflight_points: str = ""  # an SVG polyline's points
    max_checks: int = 0
    max_finals: int = 0
    max_inflight: int = 0
    strip2_top: float = 0.0
    total_checks: int = 0
    total_ok: int = 0
    total_failed: int = 0
    left: int = LEFT
    axis_y: float = 0.0
    axes: list[Label] = field(default_factory=list)
    yticks: list[Tick] = field(default_factory=list)
    xticks: list[Tick] = field(default_factory=list)


def _hhmm(at: float) -> str:
    seconds = int(at) % 86400
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def chart(minutes: list[MinuteStats]) -> Chart:
    n = max(1, len(minutes))
    step = (WIDTH - LEFT) / n
    bar_w = max(1.0, step - 2)
    max_checks = max((m.checks for m in minutes), default=0)
    finals = [
        (
            sum(v for k, v in m.finals.items() if k in SUCCESS_STATES),
            sum(v for k, v in m.finals.items() if k not in SUCCESS_STATES),
        )
        for m in minutes
    ]
    max_finals = max((a + b for a, b in finals), default=0)
    inflight = [m.inflight for m in minutes]
    max_inflight = max((v for v in inflight if v is not None), default=0)
    strip2 = TOP + STRIP + GAP
    bars: list[Bar] = []
    points: list[str] = []
    for i, m in enumerate(minutes):
        x = round(LEFT + i * step + 1, 2)
        when = _hhmm(m.at)
        if m.checks and max_checks:
            h = STRIP * m.checks / max_checks
            bars.append(
                Bar(
                    x,
                    round(TOP + STRIP - h, 2),
                    bar_w,
                    round(h, 2),
                    "checks",
                    f"{when} {m.checks} checks",
                )
            )
        good, bad = finals[i]
        if max_finals and (good or bad):
            hg = STRIP * good / max_finals
            hb = STRIP * bad / max_finals
            base = strip2 + STRIP
            if good:
                bars.append(
                    Bar(
                        x,
                        round(base - hg, 2),
                        bar_w,
                        round(hg, 2),
                        "ok",
                        f"{when} {good} succeeded",
                    )
                )
            if bad:
                bars.append(
                    Bar(
                        x,
                        round(base - hg - hb, 2),
                        bar_w,
                        round(hb, 2),
                        "failed",
                        f"{when} {bad} failed",
                    )
                )
        v = inflight[i]
        if v is not None and max_inflight:
            y = TOP + STRIP - STRIP * v / max_inflight
            points.append(f"{round(x + bar_w / 2, 2)},{round(y, 2)}")
    base1, base2 = TOP + STRIP, strip2 + STRIP
    yticks = [Tick(base1, "0"), Tick(base2, "0")]
    if max_checks:
        yticks.append(Tick(TOP, str(max_checks)))
    if max_finals:
        yticks.append(Tick(strip2, str(max_finals)))
    xticks = [
        Tick(round(LEFT + i * step + step / 2, 2), _hhmm(m.at))
        for i, m in enumerate(minutes)
        if int(m.at) // 60 % X_EVERY_MINUTES == 0
    ]
    axes = [
        Label(0, TOP - 8, "checks per minute" + (" · line: in flight" if max_inflight else "")),
        Label(0, strip2 - 8, "final states per minute"),
    ]
    return Chart(
        width=WIDTH,
        height=int(base2 + BOTTOM),
        axis_y=base2,
        axes=axes,
        yticks=yticks,
        xticks=xticks,
        bars=bars,
        inflight_points=" ".join(points),
        max_checks=max_checks,
        max_finals=max_finals,
        max_inflight=max_inflight,
        strip2_top=strip2,
        total_checks=sum(m.checks for m in minutes),
        total_ok=sum(a for a, _ in finals),
        total_failed=sum(b for _, b in finals),
    )
