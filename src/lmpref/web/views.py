"""Store objects -> response schemas, shared by the JSON API and the HTML pages."""

from __future__ import annotations

from dataclasses import asdict

from lmpref.store import AndonEvent, Label, Progress, QualityReport, Served
from lmpref.web.copying import copied_spans
from lmpref.web.schemas import (
    AndonPublic,
    LabelerQualityPublic,
    LabelPublic,
    ProgressPublic,
    QualityPublic,
    SamplePublic,
    TaskPublic,
)


def task_public(served: Served) -> TaskPublic:
    context = served.task.query.text
    samples = []
    for position, sample in enumerate(served.samples):
        copying = copied_spans(sample.text, context)
        samples.append(
            SamplePublic(
                position=position,
                text=sample.text,
                copied_fraction=copying.fraction,
                copied_spans=copying.spans,
                context_spans=copying.context_spans,
            )
        )
    return TaskPublic(
        task_id=served.task.id,
        run=served.run,
        kind="accuracy" if served.task.kind == "accuracy" else "compare",
        context=context,
        samples=samples,
        served_at=served.assignment.served_at,
        guidelines=served.guidelines,
    )


def label_public(label: Label) -> LabelPublic:
    order = label.assignment.order
    return LabelPublic(
        id=label.id,
        task_id=label.task_id,
        best=None if label.best is None else order.index(label.best),
        tie=label.tie,
        rating=label.rating,
        seconds=label.seconds,
        too_fast=label.too_fast,
        flag=label.flag,
        created_at=label.created_at,
    )


def andon_public(event: AndonEvent) -> AndonPublic:
    return AndonPublic(
        id=event.id,
        run=event.run.name if event.run else None,
        reason=event.reason,
        pulled_by=event.puller.name if event.puller else None,
        pulled_at=event.pulled_at,
        cleared_at=event.cleared_at,
        cleared_by=event.clearer.name if event.clearer else None,
        clear_note=event.clear_note,
    )


def progress_public(p: Progress) -> ProgressPublic:
    return ProgressPublic(**asdict(p))


def quality_public(report: QualityReport) -> QualityPublic:
    labelers = [
        LabelerQualityPublic(
            **{k: v for k, v in asdict(s).items() if k not in ("gold_correct", "agreement_hits")},
            gold_accuracy=s.gold_accuracy,
            agreement=s.agreement,
        )
        for s in report.labelers
    ]
    return QualityPublic(
        run=report.run,
        alpha=report.alpha,
        alpha_units=report.alpha_units,
        labelers=labelers,
        queues=[progress_public(q) for q in report.queues],
    )
