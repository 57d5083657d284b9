"""Background turns while people label: one duty cycle for all, none right after a label."""

from __future__ import annotations

import threading

import pytest

from ls_backend.core.pacing import ACTIVE_S, QUIET_S, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def pacer(duty: float = 0.25) -> tuple[Pacer, Clock]:
    clock = Clock()
    return Pacer(duty, clock=clock, sleep=clock.sleep), clock


def work(pacer: Pacer, clock: Clock, seconds: float, **kwargs: bool) -> float:
    """One turn that takes ``seconds``; returns when it started."""
    with pacer.turn(**kwargs):
        began = clock.now
        clock.now += seconds
    return began


def test_nobody_labeling_no_turn_waits() -> None:
    p, clock = pacer()
    for _ in range(5):
        work(p, clock, 1.0)
    assert clock.slept == 0.0


def test_after_a_label_work_waits_for_the_quiet_spell_then_takes_its_share() -> None:
    p, clock = pacer(duty=0.25)
    p.label_seen()
    labeled_at = clock.now
    first = work(p, clock, 1.0)
    assert first == pytest.approx(labeled_at + QUIET_S)  # the save's end, the next task
    second = work(p, clock, 0.5)
    assert second == pytest.approx(first + 1.0 + 3.0)  # 1 s of work, 3 s of rest: 25%
    third = work(p, clock, 0.1)
    assert third == pytest.approx(second + 0.5 + 1.5)


def test_a_label_during_the_rest_pushes_the_next_turn_back() -> None:
    p, clock = pacer(duty=0.5)
    p.label_seen()
    work(p, clock, 0.2)  # free again 0.2 s after it ends
    clock.now += 0.1
    p.label_seen()
    assert p.wait_s() == pytest.approx(QUIET_S)


def test_labeling_seen_elsewhere_paces_without_a_quiet_spell() -> None:
    p, clock = pacer(duty=0.5)
    first = work(p, clock, 1.0, labeling=True)
    assert clock.slept == 0.0  # no label came here: nothing to keep quiet for
    second = work(p, clock, 1.0, labeling=True)
    assert second == pytest.approx(first + 2.0)


def test_urgent_work_and_a_full_duty_are_never_paced() -> None:
    p, clock = pacer()
    p.label_seen()
    work(p, clock, 1.0, urgent=True)
    assert clock.slept == 0.0
    free, free_clock = pacer(duty=1.0)
    free.label_seen()
    work(free, free_clock, 1.0)
    work(free, free_clock, 1.0)
    assert free_clock.slept == 0.0


def test_labeling_ends_after_a_quiet_half_minute() -> None:
    p, clock = pacer()
    p.label_seen()
    assert p.active()
    clock.now += ACTIVE_S + 1
    assert not p.active()
    work(p, clock, 5.0)
    assert work(p, clock, 1.0) == clock.now - 1.0 and clock.slept == 0.0


def test_a_turn_inside_a_turn_is_part_of_it() -> None:
    p, clock = pacer(duty=0.5)
    p.label_seen()
    with p.turn():
        began = clock.now
        with p.turn():  # would deadlock on the one-at-a-time lock if it were a turn
            clock.now += 1.0
    assert work(p, clock, 0.1) == pytest.approx(began + 2.0)


def test_turns_of_two_threads_take_one_share_together() -> None:
    p = Pacer(0.5, quiet_s=0.0)
    p.label_seen()
    spans: list[tuple[float, float]] = []

    def busy() -> None:
        for _ in range(3):
            with p.turn():
                began = p._clock()
                threading.Event().wait(0.02)
                spans.append((began, p._clock()))

    threads = [threading.Thread(target=busy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans.sort()
    assert len(spans) == 6
    for (began, ended), (after, _) in zip(spans, spans[1:], strict=False):
        assert after >= ended + (ended - began) * 0.9  # one turn at a time, each rested for


def test_a_duty_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="duty"):
        Pacer(0.0)
