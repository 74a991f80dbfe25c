"""The shared decode loop's scheduling, with a fake pass: who drives, who waits, nobody hangs."""

from __future__ import annotations

import threading
import time

import pytest

from edgetts.policy.loop import RETRY, DecodeLoop, Run

JOIN_S = 10.0  # a thread still alive after this is a deadlock


class FakeRun(Run):
    """Needs ``steps`` passes; stops early when ``cancel`` is set (as a deadline does)."""

    def __init__(self, name: str, steps: int, cancel: threading.Event | None = None) -> None:
        super().__init__()
        self.name, self.steps, self.cancel = name, steps, cancel
        self.done_steps = 0


class FakeDecoder:
    """Advances every registered run one step per pass and records each pass's runs."""

    def __init__(self, pass_s: float = 0.002, fail_at: int | None = None) -> None:
        self.pass_s = pass_s
        self.fail_at = fail_at
        self.passes: list[list[str]] = []
        self.threads: set[str] = set()  # who drove

    def advance(self, runs: list[FakeRun]) -> bool:
        self.threads.add(threading.current_thread().name)
        self.passes.append([run.name for run in runs])
        if self.fail_at is not None and len(self.passes) == self.fail_at:
            raise RuntimeError("decode failed")
        time.sleep(self.pass_s)
        for run in runs:
            if run.cancel is not None and run.cancel.is_set():
                run.done = True
                continue
            run.done_steps += 1
            run.done = run.done_steps >= run.steps
        return True


def in_threads(*targets) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, name=f"caller-{i}") for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(thread.is_alive() for thread in threads), "a caller never returned (deadlock)"
    return threads


def test_a_caller_alone_drives_its_own_run_in_its_own_thread():
    decoder = FakeDecoder(pass_s=0)
    loop = DecodeLoop(decoder.advance)
    run = FakeRun("a", steps=5)
    loop.run(run)
    assert run.done and run.done_steps == 5
    assert decoder.passes == [["a"]] * 5
    assert decoder.threads == {threading.current_thread().name}


def test_runs_of_two_threads_advance_in_the_same_passes_and_the_longer_one_finishes():
    decoder = FakeDecoder()
    loop = DecodeLoop(decoder.advance)
    short, long = FakeRun("short", steps=5), FakeRun("long", steps=40)
    start = threading.Barrier(2)

    def call(run):
        def target():
            start.wait()
            loop.run(run)

        return target

    in_threads(call(short), call(long))
    assert short.done_steps == 5 and long.done_steps == 40
    shared = [p for p in decoder.passes if sorted(p) == ["long", "short"]]
    assert len(shared) >= 3  # they were batched together, not one after the other
    assert len(decoder.passes) < 45  # and not 5 + 40 passes
    assert decoder.passes[-1] == ["long"]  # the short one's driver handed over and left


def test_runs_are_passed_in_arrival_order():
    decoder = FakeDecoder()
    loop = DecodeLoop(decoder.advance)
    first, second = FakeRun("first", steps=30), FakeRun("second", steps=5)
    t1 = threading.Thread(target=loop.run, args=(first,))
    t1.start()
    while not decoder.passes:
        time.sleep(0.001)
    t2 = threading.Thread(target=loop.run, args=(second,))
    t2.start()
    t1.join(JOIN_S)
    t2.join(JOIN_S)
    both = [p for p in decoder.passes if len(p) == 2]
    assert both and all(p == ["first", "second"] for p in both)  # the earlier run comes first


def test_a_cancelled_run_returns_while_the_other_goes_on():
    decoder = FakeDecoder()
    loop = DecodeLoop(decoder.advance)
    cancel = threading.Event()
    cancelled, other = FakeRun("cancelled", steps=10_000, cancel=cancel), FakeRun("other", steps=60)

    def cancel_soon():
        time.sleep(0.02)
        cancel.set()

    in_threads(lambda: loop.run(cancelled), lambda: loop.run(other), cancel_soon)
    assert cancelled.done and cancelled.done_steps < 10_000
    assert other.done_steps == 60


def test_a_task_waiting_for_a_slot_runs_once_another_thread_frees_it():
    decoder = FakeDecoder()
    loop = DecodeLoop(decoder.advance)
    slots = {"free": 0}
    tries: list[int] = []

    def take_slot():
        tries.append(slots["free"])
        if not slots["free"]:
            return RETRY  # not now: the other search holds the only slot
        slots["free"] -= 1
        return "slot"

    got: list[str] = []

    def holder():
        loop.run(FakeRun("holder", steps=20))
        loop.post(lambda: slots.__setitem__("free", 1))  # its search ends: the slot is free

    in_threads(holder, lambda: got.append(loop.call(take_slot)))
    assert got == ["slot"] and len(tries) >= 2 and tries[-1] == 1


def test_a_waiting_task_with_nothing_to_decode_does_not_spin():
    """While a task waits and no run decodes, the driver sleeps between tries (no busy loop)."""
    decoder = FakeDecoder()
    loop = DecodeLoop(decoder.advance)
    tries: list[float] = []
    ready = threading.Event()

    def task():
        tries.append(time.perf_counter())
        return "ok" if ready.is_set() else RETRY

    def release_later():
        time.sleep(0.3)
        ready.set()
        loop.post(lambda: None)  # any new work wakes the idle driver

    got: list[str] = []
    in_threads(lambda: got.append(loop.call(task)), release_later)
    assert got == ["ok"]
    assert len(tries) < 30  # ~0.3 s / IDLE_WAIT_S tries, not thousands


def test_a_post_with_nobody_driving_runs_at_once():
    loop = DecodeLoop(FakeDecoder().advance)
    ran: list[int] = []
    loop.post(lambda: ran.append(1))
    assert ran == [1]


def test_a_failed_pass_reaches_every_caller_and_the_loop_serves_on():
    decoder = FakeDecoder(fail_at=3)
    loop = DecodeLoop(decoder.advance)
    errors: list[str] = []

    def call(run):
        def target():
            try:
                loop.run(run)
            except RuntimeError as exc:
                errors.append(str(exc))

        return target

    in_threads(call(FakeRun("a", steps=50)), call(FakeRun("b", steps=50)))
    assert errors and set(errors) == {"decode failed"}
    later = FakeRun("later", steps=2)
    loop.run(later)
    assert later.done_steps == 2


def test_a_task_error_is_raised_in_its_caller():
    loop = DecodeLoop(FakeDecoder().advance)
    with pytest.raises(ValueError, match="bad prompt"):
        loop.call(lambda: (_ for _ in ()).throw(ValueError("bad prompt")))
    assert loop.call(lambda: 7) == 7


def test_many_callers_with_short_and_long_runs_all_return():
    decoder = FakeDecoder(pass_s=0.0005)
    loop = DecodeLoop(decoder.advance)
    runs = [FakeRun(f"r{i}", steps=1 + (i * 7) % 23) for i in range(12)]

    def call(run):
        def target():
            for _ in range(3):  # a search of several rounds
                run.done, run.done_steps = False, 0
                loop.run(run)
                loop.post(lambda: None)  # a release between rounds

        return target

    in_threads(*[call(run) for run in runs])
    assert all(run.done for run in runs)


def test_submitted_runs_advance_together_and_come_back_as_each_is_done():
    decoder = FakeDecoder(pass_s=0)
    loop = DecodeLoop(decoder.advance)
    short, long = FakeRun("short", 1), FakeRun("long", 3)
    loop.submit(short)
    loop.submit(long)
    assert loop.wait_any([long, short]) is short  # after one pass, the long one still going
    again = FakeRun("again", 1)
    loop.submit(again)  # joins the long one's batch while it decodes
    assert loop.wait_any([long, again]) is again
    assert loop.wait_any([long]) is long
    assert decoder.passes == [["short", "long"], ["long", "again"], ["long"]]


def test_wait_any_raises_the_error_of_a_failed_run():
    loop = DecodeLoop(FakeDecoder(pass_s=0, fail_at=1).advance)
    run = FakeRun("a", 2)
    loop.submit(run)
    with pytest.raises(RuntimeError, match="decode failed"):
        loop.wait_any([run])


def test_a_task_posted_while_the_driver_finishes_runs_before_the_driver_leaves():
    """Seen in review: a post() (a search closing, freeing its slots) that came just as the
    driver's own work finished found the loop driven and returned; its task then sat in the
    inbox until some later call, holding the slots from searches that wanted them."""
    ran: list[str] = []
    loop: DecodeLoop

    def advance(runs: list[Run]) -> bool:
        for run in runs:
            run.done = True
        # The driver takes its inbox once more before it leaves; a post made after that (here,
        # by a task taken then: in life another thread's, in that moment) must not be left.
        loop.post(lambda: loop.post(lambda: ran.append("freed")))
        return True

    loop = DecodeLoop(advance)
    loop.run(Run())
    assert ran == ["freed"]
