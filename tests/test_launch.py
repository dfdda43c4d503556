"""The torchrun helper of the tests relaunches only on gloo's teardown abort, and only once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import launch


@pytest.mark.parametrize(
    "results, launches, passes",
    [
        ([(0, "ok")], 1, True),
        ([(1, "Traceback: ValueError")], 1, False),
        ([(1, f"done\n{launch.TEARDOWN_ABORT}"), (0, "ok")], 2, True),
        ([(1, launch.TEARDOWN_ABORT), (1, launch.TEARDOWN_ABORT)], 2, False),
    ],
)
def test_relaunch_only_after_the_teardown_abort(monkeypatch, results, launches, passes):
    calls = []

    def fake(script, args, timeout_s):
        calls.append(args)
        return results[len(calls) - 1]

    monkeypatch.setattr(launch, "_launch", fake)
    if passes:
        assert launch.torchrun(Path("script.py"), "a") == results[-1][1]
    else:
        with pytest.raises(AssertionError):
            launch.torchrun(Path("script.py"), "a")
    assert len(calls) == launches
