from ls_backend.core.requeue import push_reason

FRONT = list(range(100))


def reason(front=FRONT, waiting=FRONT, **kw):
    args = {"top_k": 100, "new_labels": 0, "sync_every": 10, **kw}
    return push_reason(front, waiting, **args)


def test_the_first_ranking_and_explicit_requests_are_pushed():
    assert reason(waiting=None) == "first ranking"
    assert reason(forced=True) == "requested"


def test_an_unchanged_front_is_not_pushed():
    assert reason() is None
    # Labeled tasks leave the queue; the rest keep their places: still nothing to push.
    assert (
        reason(front=FRONT[5:] + [200, 201, 202, 203, 204], waiting=FRONT[5:], new_labels=5) is None
    )


def test_every_sync_every_labels_push():
    assert reason(new_labels=10) == "10 new labels"


def test_a_new_kind_of_model_that_reorders_the_front_is_pushed_one_that_barely_does_is_not():
    barely = FRONT[:90] + list(range(500, 510))  # 10% of the queued tasks move out
    assert reason(front=barely, new_kind=True) is None
    reshuffled = FRONT[:70] + list(range(500, 530))
    assert "moves 30%" in reason(front=reshuffled, new_kind=True)


def test_a_head_refitted_on_a_few_more_labels_waits_for_sync_every():
    reshuffled = list(range(500, 600))  # a large pool: every refit moves the whole front
    assert reason(front=reshuffled, new_labels=3) is None
    assert reason(front=reshuffled, new_labels=10) == "10 new labels"


def test_a_queue_running_low_is_refilled():
    assert reason(waiting=FRONT[60:]).startswith("queue running low")
    # Nothing left to add: no push for that reason.
    assert reason(front=FRONT[60:], waiting=FRONT[60:]) is None


def test_a_partly_ranked_pool_is_pushed_as_it_grows():
    assert reason(pool_grew=True) == "more tasks ranked"


def test_a_full_backlog_of_old_predictions_holds_all_but_requests_and_a_low_queue():
    assert reason(new_labels=10, backlog_full=True) is None
    assert reason(front=FRONT[:70] + list(range(500, 530)), backlog_full=True) is None
    assert reason(forced=True, backlog_full=True) == "requested"
    assert reason(waiting=FRONT[60:], backlog_full=True).startswith("queue running low")
