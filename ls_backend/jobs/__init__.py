"""Background work: lanes (``lanes``, ``training``, ``sync``) and the schedulers that run them
(``threads`` in-process by default, ``rq`` with REDIS_URL), which never name a lane."""

from __future__ import annotations

from ls_backend.jobs.lanes import Lanes
from ls_backend.jobs.scheduler import Scheduler
from ls_backend.jobs.sync import attach_label_studio
from ls_backend.jobs.training import training_lanes
from ls_backend.projects import Projects


def lanes_for(projects: Projects) -> Lanes:
    """The lanes the settings ask for: training, and with Label Studio's URL and key, sync."""
    lanes = training_lanes(projects.settings)
    if projects.settings.sync_configured:
        attach_label_studio(lanes, projects.settings)
    return lanes


def start_scheduler(projects: Projects, lanes: Lanes | None = None) -> Scheduler:
    """The scheduler the settings ask for, listening to ``projects``: RQ with REDIS_URL (this
    process only enqueues), else this process's threads."""
    lanes = lanes or lanes_for(projects)
    if projects.settings.redis_url:
        from ls_backend.jobs.rq import RqScheduler, connect

        return RqScheduler(projects, lanes, connect(projects.settings.redis_url))
    from ls_backend.jobs.threads import ThreadScheduler

    return ThreadScheduler(projects, lanes)
