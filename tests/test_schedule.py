import pytest

from pruning_tools.schedule import is_refresh_step, last_step, schedule_step, target_sparsity


def test_dense_before_pretrain_end():
    assert [target_sparsity(t, 10, 100, 0.0, 0.9) for t in (0, 1, 10)] == [0.0, 0.0, 0.0]
    assert not any(is_refresh_step(t, 10, 100, 5) for t in range(0, 11))


def test_cubic_ramp_exact_values():
    # s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / n) ** 3
    assert target_sparsity(11, 10, 100, 0.0, 0.9) == pytest.approx(0.9 - 0.9 * 0.99**3)
    assert target_sparsity(60, 10, 100, 0.0, 0.9) == pytest.approx(0.9 - 0.9 * 0.5**3)  # 0.7875
    assert target_sparsity(60, 10, 100, 0.5, 0.9) == pytest.approx(0.9 - 0.4 * 0.125)


def test_final_target_reached_exactly_at_last_step():
    assert target_sparsity(110, 10, 100, 0.0, 0.9) == 0.9
    assert is_refresh_step(110, 10, 100, 30)  # 100 % 30 != 0 but it is the last step
    assert target_sparsity(10_000, 10, 100, 0.0, 0.9) == 0.9
    assert not is_refresh_step(111, 10, 100, 1)


def test_refresh_steps_follow_frequency_from_pretrain_end():
    assert [t for t in range(1, 30) if is_refresh_step(t, 5, 20, 6)] == [11, 17, 23, 25]


def test_one_shot_when_sparse_step_is_zero():
    assert [t for t in range(1, 10) if is_refresh_step(t, 3, 0, 100)] == [4]
    assert schedule_step(4, 3, 0, 100, 0.0, 0.8) == (True, 0.8)
    assert schedule_step(3, 3, 0, 100, 0.0, 0.8) == (False, 0.0)
    assert last_step(3, 0) == 4 and last_step(3, 10) == 13


def test_resume_offset_gives_same_values():
    # the schedule is a pure function of t: a resumed run at t continues with the same values
    full = [schedule_step(t, 7, 50, 4, 0.1, 0.95) for t in range(1, 80)]
    resumed = [schedule_step(t, 7, 50, 4, 0.1, 0.95) for t in range(40, 80)]
    assert full[39:] == resumed


def test_monotone_non_decreasing():
    values = [target_sparsity(t, 0, 1000, 0.0, 0.95) for t in range(0, 1200)]
    assert all(a <= b for a, b in zip(values, values[1:]))
