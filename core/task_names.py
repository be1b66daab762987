"""Celery task names and queues, shared by whoever sends and whoever runs them.

The service sends tasks *by name*, so it never imports worker code; these constants
are the contract between the two.
"""

from __future__ import annotations

import enum


class TaskName(str, enum.Enum):
    IMPORT_CATALOG = "lookalike.import_catalog"
    EMBED_IMAGES = "lookalike.embed_images"
    EMBED_CHUNK = "lookalike.embed_chunk"
    REINDEX = "lookalike.reindex"
    RETRAIN = "lookalike.retrain"
    RETIRE_OLD_INDEXES = "lookalike.retire_old_indexes"
    SCHEDULED_REINDEX = "lookalike.scheduled_reindex"
    RECOVER_JOBS = "lookalike.recover_jobs"
    SCAN_DUPLICATES = "lookalike.scan_duplicates"


class Queue(str, enum.Enum):
    EMBED = "embed"
    INDEX = "index"
    TRAIN = "train"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.IMPORT_CATALOG: Queue.EMBED,
    TaskName.EMBED_IMAGES: Queue.EMBED,
    TaskName.EMBED_CHUNK: Queue.EMBED,
    TaskName.REINDEX: Queue.INDEX,
    TaskName.SCHEDULED_REINDEX: Queue.INDEX,
    TaskName.RETIRE_OLD_INDEXES: Queue.INDEX,
    TaskName.RETRAIN: Queue.TRAIN,
    # Reads the whole index like a build does (minutes at 70k), so it waits with the builds.
    TaskName.SCAN_DUPLICATES: Queue.INDEX,
    # Short and urgent: not behind a long build on the index queue.
    TaskName.RECOVER_JOBS: Queue.EMBED,
}

INDEX_CHANGED_CHANNEL = "lookalike:index-changed"
"""Redis pub/sub channel on which a publish announces the new active index version."""
