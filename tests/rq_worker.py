"""`ls-backend worker` over the HashEncoder, for tests: the same ``rq_jobs.work`` in its own
process, without loading the embedded model. Arguments: the lanes to take (default: all).
SLOW_HEAD_S: every head round first sleeps this long (a run to kill in the middle)."""

from __future__ import annotations

import os
import sys
import time

from fakes import HashEncoder

from ls_backend import logs
from ls_backend.jobs import lanes_for
from ls_backend.jobs import rq as rq_jobs
from ls_backend.jobs.training import HeadLane
from ls_backend.projects import Projects
from ls_backend.settings import Settings

if __name__ == "__main__":  # a LoRA round's spawned child imports this module again
    rq_jobs.SWEEP_S = float(os.environ.get("SWEEP_S", rq_jobs.SWEEP_S))
    settings = Settings()
    assert settings.redis_url
    logs.configure("INFO", False)
    if slow := float(os.environ.get("SLOW_HEAD_S", 0)):
        train = HeadLane.train

        def slow_train(self, *args, **kwargs):
            time.sleep(slow)
            return train(self, *args, **kwargs)

        HeadLane.train = slow_train
    lanes = sys.argv[1].split(",") if len(sys.argv) > 1 else None
    projects = Projects(settings, encoder=HashEncoder())
    rq_jobs.work(projects, lanes_for(projects), settings.redis_url, lanes)
