"""The label store: runs, comparison tasks, labels, labelers, quality control, Andon.

Every function takes a SQLAlchemy `Session` first and keyword-only arguments after it, and
leaves committing to the caller (`with transaction(factory) as session: ...`). Nothing here
imports torch: the labeling server must start in a second on a machine without the ML stack.

    factory = open_store("sqlite:///lmpref.db")   # runs migrations
    with transaction(factory) as session:
        enqueue(session, run="sentiment", records=read_jsonl("samples.jsonl"), batch="round-0")
"""

from lmpref.store.andon import clear_andon, must_stop, open_andon_events, pull_andon, recent_andon_events
from lmpref.store.db import DEFAULT_URL, default_url, make_engine, open_store, transaction, upgrade
from lmpref.store.enqueue import (
    EnqueueResult,
    enqueue,
    ensure_run,
    get_run,
    list_runs,
    read_jsonl,
    set_guidelines,
    valid_samples,
)
from lmpref.store.errors import Conflict, Invalid, NotFound, StoreError
from lmpref.store.export import FORMATS, export_records, labeled
from lmpref.store.labelers import (
    authenticate,
    create_labeler,
    end_session,
    end_sessions,
    get_labeler,
    list_labelers,
    rotate_token,
    server_secret,
    session_labeler,
    set_active,
    start_session,
)
from lmpref.store.mine import (
    UNDO_WINDOW,
    MyProgress,
    MyShare,
    can_undo,
    my_progress,
    my_recent_labels,
    my_share,
    undo_label,
)
from lmpref.store.models import AndonEvent, Assignment, Label, Labeler, Run, Task
from lmpref.store.quality import LabelerQuality, QualityReport, quality_report
from lmpref.store.queue import Progress, Served, next_task, progress, save_label, skip_task
from lmpref.store.review import answer_key, disputed_tasks, majority, task_answers

__all__ = [
    "DEFAULT_URL",
    "FORMATS",
    "AndonEvent",
    "Assignment",
    "Conflict",
    "EnqueueResult",
    "Invalid",
    "Label",
    "MyProgress",
    "MyShare",
    "UNDO_WINDOW",
    "Labeler",
    "LabelerQuality",
    "NotFound",
    "Progress",
    "QualityReport",
    "Run",
    "Served",
    "StoreError",
    "Task",
    "answer_key",
    "authenticate",
    "can_undo",
    "clear_andon",
    "create_labeler",
    "default_url",
    "disputed_tasks",
    "end_session",
    "end_sessions",
    "enqueue",
    "ensure_run",
    "export_records",
    "get_labeler",
    "get_run",
    "labeled",
    "list_labelers",
    "list_runs",
    "majority",
    "make_engine",
    "must_stop",
    "my_progress",
    "my_share",
    "my_recent_labels",
    "next_task",
    "open_andon_events",
    "open_store",
    "progress",
    "pull_andon",
    "quality_report",
    "read_jsonl",
    "recent_andon_events",
    "rotate_token",
    "save_label",
    "server_secret",
    "session_labeler",
    "set_active",
    "set_guidelines",
    "skip_task",
    "start_session",
    "task_answers",
    "transaction",
    "undo_label",
    "upgrade",
    "valid_samples",
]
