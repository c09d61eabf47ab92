"""Store objects -> response schemas, shared by the JSON API and the HTML pages."""

from __future__ import annotations

import functools
from dataclasses import asdict

from lmpref.store import AndonEvent, Label, Progress, QualityReport, Served
from lmpref.store.hot import SavedLabel, ServedTask
from lmpref.web.copying import Copying, copied_spans
from lmpref.web.schemas import (
    AndonPublic,
    LabelerQualityPublic,
    LabelPublic,
    ProgressPublic,
    QualityPublic,
    SamplePublic,
    TaskPublic,
)


@functools.lru_cache(maxsize=4096)
def _copying(text: str, context: str) -> Copying:
    """`copied_spans`, kept for texts seen lately: a task is served to several labelers (and
    again on every reload), and its texts never change. Keyed by the texts, so safe across stores."""
    return copied_spans(text, context)


# Responses built from the store's own rows are not validated again: `model_construct` takes
# values the store and `copied_spans` already typed (validating a task's 5 models cost about as
# much CPU as serializing them, on every request; issue 16). Serialization is unchanged.


def _samples(texts: list[str], context: str) -> list[SamplePublic]:
    samples = []
    for position, text in enumerate(texts):
        copying = _copying(text, context)
        samples.append(
            SamplePublic.model_construct(
                position=position,
                text=text,
                copied_fraction=copying.fraction,
                copied_spans=copying.spans,
                context_spans=copying.context_spans,
            )
        )
    return samples


def task_public(served: Served | ServedTask) -> TaskPublic:
    if isinstance(served, ServedTask):  # the JSON API's Core path (`store.hot`)
        task_id, kind, context, texts = served.task_id, served.kind, served.context, served.samples
        served_at = served.served_at
    else:
        task_id, kind, context = served.task.id, served.task.kind, served.task.query.text
        texts, served_at = [s.text for s in served.samples], served.assignment.served_at
    return TaskPublic.model_construct(
        task_id=task_id,
        run=served.run,
        kind="accuracy" if kind == "accuracy" else "compare",
        context=context,
        samples=_samples(texts, context),
        served_at=served_at,
        guidelines=served.guidelines,
    )


def label_public(label: Label | SavedLabel) -> LabelPublic:
    if isinstance(label, SavedLabel):  # positions already
        return LabelPublic.model_construct(**{f: getattr(label, f) for f in LabelPublic.model_fields})
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
