"""The broker's running clock leaves its own stalls out of the silence it measures."""

from snapkv.broker.clock import RunningClock


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_time_the_loop_did_not_run_is_not_counted():
    t = FakeTime()
    clock = RunningClock(tick=0.05, stall=0.25, monotonic=t)
    start = clock.now()
    for _ in range(20):  # 1 s of normal ticks
        t.t += 0.05
        clock.now()
    assert abs(clock.now() - start - 1.0) < 1e-9
    t.t += 3.0  # SIGSTOP for 3 s
    assert clock.now() - start < 1.1
    assert clock.stalls == 1
    t.t += 0.1
    assert abs(clock.now() - start - 1.15) < 1e-6  # time runs on after the stall


def test_short_gaps_count_as_time():
    t = FakeTime()
    clock = RunningClock(tick=0.05, stall=0.25, monotonic=t)
    start = clock.now()
    t.t += 0.2
    assert abs(clock.now() - start - 0.2) < 1e-9
    assert clock.stalls == 0
