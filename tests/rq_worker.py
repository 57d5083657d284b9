"""`ls-backend worker` over the HashEncoder, for tests: the same ``rq_jobs.work`` in its own
process, without loading the embedded model. Arguments: the lanes to take (default: all)."""

from __future__ import annotations

import os
import sys

from fakes import HashEncoder
from redis import Redis

from ls_backend.jobs import lanes_for
from ls_backend.jobs import rq as rq_jobs
from ls_backend.projects import Projects
from ls_backend.settings import Settings

if __name__ == "__main__":  # a LoRA round's spawned child imports this module again
    rq_jobs.SWEEP_S = float(os.environ.get("SWEEP_S", rq_jobs.SWEEP_S))
    settings = Settings()
    assert settings.redis_url
    lanes = sys.argv[1].split(",") if len(sys.argv) > 1 else None
    projects = Projects(settings, encoder=HashEncoder())
    rq_jobs.work(projects, lanes_for(projects), Redis.from_url(settings.redis_url), lanes)
