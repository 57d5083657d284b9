import os
import threading
import time

from ls_backend.core.priority import PriorityLock, lower_thread_priority


def test_a_waiting_foreground_request_goes_before_queued_background_work():
    lock = PriorityLock()
    order: list[str] = []
    background_started = threading.Event()

    def background(name: str) -> None:
        with lock.background():
            order.append(name)
            background_started.set()
            time.sleep(0.1)

    def foreground() -> None:
        with lock.foreground():
            order.append("live")

    first = threading.Thread(target=background, args=("chunk 1",))
    first.start()
    background_started.wait(5)
    # While chunk 1 holds the lock, another chunk and then a live request queue up.
    second = threading.Thread(target=background, args=("chunk 2",))
    second.start()
    time.sleep(0.02)
    live = threading.Thread(target=foreground)
    live.start()
    for thread in (first, second, live):
        thread.join(5)
    assert order == ["chunk 1", "live", "chunk 2"]


def test_the_lock_is_exclusive():
    lock = PriorityLock()
    inside = 0
    most = 0
    guard = threading.Lock()

    def hold(kind: str) -> None:
        nonlocal inside, most
        with getattr(lock, kind)():
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.005)
            with guard:
                inside -= 1

    threads = [
        threading.Thread(target=hold, args=("foreground" if i % 2 else "background",))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert most == 1


def test_background_holders_take_turns():
    """A sync embedding an import in a loop must not starve a training round's encode."""
    lock = PriorityLock()
    order: list[str] = []
    go = threading.Event()

    def sync() -> None:
        for i in range(5):
            with lock.background():
                order.append(f"sync {i}")
                if i == 0:
                    go.set()
                time.sleep(0.02)

    def training() -> None:
        go.wait(5)
        with lock.background():
            order.append("training")

    threads = [threading.Thread(target=sync), threading.Thread(target=training)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert order.index("training") == 1


def test_a_background_thread_can_lower_its_own_priority_only():
    seen: list[int] = []

    def worker() -> None:
        lower_thread_priority(7)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert seen == [max(7, before)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
