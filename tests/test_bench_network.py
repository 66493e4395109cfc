"""docker-vs-vm/bench_network.py's own logic, without running it (it needs root,
dockerd and minutes): busybox time's output is read right, --quick is a small
run, and the report's goals are applied in the direction each goal has."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO

SPEC = importlib.util.spec_from_file_location(
    "bench_network", REPO / "docker-vs-vm" / "bench_network.py"
)
assert SPEC is not None and SPEC.loader is not None
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_busybox_time_is_read_in_seconds() -> None:
    assert bench.busybox_real("500+0 records in\nreal\t0m 13.95s\nuser\t0m 0.30s\n") == 13.95
    assert bench.busybox_real("real\t1m 2.50s\nuser\t0m 0.00s\n") == 62.5
    with pytest.raises(RuntimeError, match="no time"):
        bench.busybox_real("nc: can't connect to remote host: Connection refused\n")


def test_quick_is_a_small_run_and_numbers_win() -> None:
    quick = bench.parse_args(["--quick"])
    full = bench.parse_args([])
    assert (quick.runs, quick.mb, quick.requests) < (full.runs, full.mb, full.requests)
    assert quick.only == ["throughput", "latency", "start"]
    assert bench.parse_args(["--quick", "--mb", "7"]).mb == 7


def test_goals_point_the_right_way() -> None:
    # throughput: more is better (>= 0.9x); latency and start: less is better
    assert ": met" in bench.ratio_line("t", 95.0, 100.0, "MB/s", "throughput")
    assert "NOT met" in bench.ratio_line("t", 80.0, 100.0, "MB/s", "throughput")
    assert "NOT met" in bench.ratio_line("l", 0.002, 0.001, "s", "latency")
    assert "ratio 0.40" in bench.ratio_line("s", 0.2, 0.5, "s", "start")
    assert ": met" in bench.ratio_line("s", 0.2, 0.5, "s", "start")
