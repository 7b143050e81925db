"""The benchmark suite's own logic (benchmarks/run.py): the memory-headroom search.

The measurements need a GPU; what is tested here is that the search finds the right size.
"""

import pytest

from benchmarks.run import largest_fitting


@pytest.mark.parametrize("start, cap, step", [(64, 4096, 32), (16, 512, 8), (4, 512, 2), (24, 100, 16)])
def test_largest_fitting_finds_the_threshold(start, cap, step):
    for threshold in list(range(start - 3, min(cap, 700) + 5)) + [cap - 1, cap, cap + 50]:
        calls = []

        def fits(n):
            calls.append(n)
            return n <= threshold

        good, bad, probes = largest_fitting(fits, start, cap, step)
        assert probes == [(n, n <= threshold) for n in calls]
        assert all(start <= n <= cap for n in calls) and len(calls) == len(set(calls))  # no size twice
        if threshold < start:
            assert (good, bad) == (None, start)
            continue
        if threshold >= cap:
            assert (good, bad) == (cap, None)
            continue
        assert good <= threshold < bad <= cap
        assert not any(good < m < bad for m in range(0, bad, step)), (threshold, good, bad)
        assert len(calls) <= 2 * (cap // start).bit_length() + (cap // step).bit_length() + 2  # logarithmic


def test_largest_fitting_stops_at_the_first_failure_of_doubling():
    good, bad, probes = largest_fitting(lambda n: n <= 100, 64, 4096, 32)
    assert (good, bad) == (96, 128) and probes == [(64, True), (128, False), (96, True)]
