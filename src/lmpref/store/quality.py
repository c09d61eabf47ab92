"""Quality control for best-of-K labels, defined here because labeling tools rarely define it.

For each labeler:
- gold accuracy: on gold tasks, the share of answers (choices and ties) that pick the known
  best sample; a tie counts as wrong because gold tasks have a clear winner.
- pairwise agreement: over every task this labeler and another labeler both answered, the
  share of (this labeler, other labeler) pairs giving the same answer ("tie" is an answer).
- labels per hour: labels / (time from first to last label + one median label time).
- median seconds per label and the number under the run's minimum time (`too_fast`).

Across labelers: Krippendorff's alpha (nominal) over tasks with two or more answers, the
answer being the chosen slot or "tie". Slots are the canonical sample order, not the
shuffled one, so equal answers are equal choices.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmpref.store.enqueue import get_run, list_runs
from lmpref.store.models import Assignment, GoldTask, Label, Labeler, Task
from lmpref.store.queue import Progress, progress

TIE = -1  # the answer value of a tie in agreement and alpha


@dataclass
class LabelerQuality:
    name: str
    labels: int = 0  # every label in scope: gold tasks, bare flags and too-fast ones included
    exportable: int = 0  # answers on non-gold tasks, not too fast: this labeler's rows in a default export
    gold_answered: int = 0
    gold_correct: int = 0
    agreement_pairs: int = 0
    agreement_hits: int = 0
    labels_per_hour: float | None = None
    median_seconds: float | None = None
    too_fast: int = 0
    flagged: int = 0
    skipped: int = 0

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_answered if self.gold_answered else None

    @property
    def agreement(self) -> float | None:
        return self.agreement_hits / self.agreement_pairs if self.agreement_pairs else None


@dataclass
class QualityReport:
    run: str | None
    labelers: list[LabelerQuality] = field(default_factory=list)
    alpha: float | None = None  # Krippendorff's alpha, nominal; None if undefined
    alpha_units: int = 0  # tasks with 2+ answers that alpha was computed over
    queues: list[Progress] = field(default_factory=list)


def krippendorff_alpha(answers_by_task: dict[int, dict[int, int]]) -> float | None:
    """Nominal alpha of {task: {labeler: answer}}; None when undefined (no pairs, one value)."""
    units = {t: a for t, a in answers_by_task.items() if len(a) >= 2}
    values = {v for a in units.values() for v in a.values()}
    if not units or len(values) < 2:
        return None
    import krippendorff  # numpy underneath; imported here so the server starts fast
    import numpy as np

    coders = sorted({c for a in units.values() for c in a})
    index = {c: i for i, c in enumerate(coders)}
    data = np.full((len(coders), len(units)), np.nan)  # (coders, units), nan = not answered
    for j, answers in enumerate(units.values()):
        for coder, value in answers.items():
            data[index[coder], j] = value
    alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    return None if math.isnan(alpha) else alpha


def quality_report(session: Session, *, run: str | None = None) -> QualityReport:
    q = (
        select(Label, Labeler.name, GoldTask.best)
        .join(Labeler, Label.labeler_id == Labeler.id)
        .join(Task, Label.task_id == Task.id)
        .outerjoin(GoldTask, GoldTask.task_id == Task.id)
        .order_by(Label.id)
    )
    skips = (
        select(Labeler.name).join(Assignment, Assignment.labeler_id == Labeler.id).where(Assignment.status == "skipped")
    )
    if run is not None:
        run_id = get_run(session, name=run).id
        q = q.where(Task.run_id == run_id)
        skips = skips.join(Task, Assignment.task_id == Task.id).where(Task.run_id == run_id)

    stats: dict[str, LabelerQuality] = {}
    seconds: dict[str, list[float]] = defaultdict(list)
    times: dict[str, list] = defaultdict(list)
    answers: dict[int, dict[int, int]] = defaultdict(dict)  # task -> labeler -> answer
    names: dict[int, str] = {}
    for label, name, gold_best in session.execute(q):
        s = stats.setdefault(name, LabelerQuality(name=name))
        s.labels += 1
        s.too_fast += label.too_fast
        s.exportable += (
            gold_best is None
            and not label.too_fast
            and (label.best is not None or label.tie or label.rating is not None)
        )
        s.flagged += label.flag is not None
        seconds[name].append(label.seconds)
        times[name].append(label.created_at)
        if label.best is None and not label.tie:
            continue  # a bare flag is not an answer; an accuracy rating is not a best-of-K one
        answer: int = TIE if label.tie or label.best is None else label.best
        if gold_best is not None:
            s.gold_answered += 1
            s.gold_correct += answer == gold_best
        answers[label.task_id][label.labeler_id] = answer
        names[label.labeler_id] = name
    for name in session.scalars(skips):
        stats.setdefault(name, LabelerQuality(name=name)).skipped += 1

    for task_answers in answers.values():
        for coder, answer in task_answers.items():
            s = stats[names[coder]]
            for other, other_answer in task_answers.items():
                if other != coder:
                    s.agreement_pairs += 1
                    s.agreement_hits += answer == other_answer
    for name, s in stats.items():
        if seconds[name]:
            s.median_seconds = statistics.median(seconds[name])
            span = (max(times[name]) - min(times[name])).total_seconds() + s.median_seconds
            s.labels_per_hour = s.labels / max(span, 1.0) * 3600

    runs = [run] if run is not None else [r.name for r in list_runs(session)]
    report = QualityReport(run=run, labelers=sorted(stats.values(), key=lambda s: s.name))
    report.alpha = krippendorff_alpha(answers)
    report.alpha_units = sum(len(a) >= 2 for a in answers.values())
    report.queues = [progress(session, run=r) for r in runs]
    return report
