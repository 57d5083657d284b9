import threading
import time

from ls_backend.core.priority import PriorityLock


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
