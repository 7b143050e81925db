"""The benchmark suite's own logic: the memory-headroom search (benchmarks/run.py), the seed summary of
bench_rd.py grid.

run.py's measurements need a GPU; what is tested here is the logic around them.
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


def test_seed_summary_gives_each_seeds_mean_and_each_photos_spread():
    from benchmarks.bench_rd import seed_summary

    def point(budget, seed, psnr, jpeg=26.0):
        return {"budget_bpp": budget, "seed": seed, "psnr": psnr, "jpeg_psnr_same_bpp": jpeg}

    results = {"photos": [
        {"name": "a", "grid": [point(0.3, 0, 27.0), point(0.3, 1, 28.0), point(1.0, 0, 30.0),
                               point(None, 0, 20.0, None)]},
        {"name": "b", "grid": [point(0.3, 0, 28.0), point(0.3, 1, 27.5), point(1.0, 0, 31.0)]},
    ]}
    # one seed at 1 bpp: nothing to compare; no JPEG at the default lambda: left out
    assert seed_summary(results) == [
        "--bpp 0.3: mean difference per seed 0 +1.50, 1 +1.75; spread per photo a 1.00, b 0.50"]
    # runs written before the seed was recorded count as seed 0
    del results["photos"][0]["grid"][0]["seed"]
    assert seed_summary(results)[0].startswith("--bpp 0.3: mean difference per seed 0 +1.50, 1 +1.75")
