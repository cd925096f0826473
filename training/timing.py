"""Stage timings of a training run: what each stage took, for the output and for MLflow."""

from __future__ import annotations

import time
from collections.abc import Callable

Stage = Callable[[str], None]


class StageClock:
    """Reports each stage and times it: a stage lasts until the next one starts (warnings are not stages)."""

    def __init__(self, report: Stage):
        self.report = report
        self.marks: list[tuple[str, float]] = []

    def __call__(self, message: str) -> None:
        if not message.startswith("WARNING:"):
            self.marks.append((message.split(" (")[0], time.perf_counter()))
        self.report(message)

    def seconds(self) -> dict[str, float]:
        """Stage -> seconds so far (a stage seen twice adds up)."""
        out: dict[str, float] = {}
        ends = [t for _, t in self.marks[1:]] + [time.perf_counter()]
        for (name, start), end in zip(self.marks, ends):
            out[name] = round(out.get(name, 0.0) + end - start, 2)
        return out


def slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
