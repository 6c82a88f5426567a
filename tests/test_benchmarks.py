"""Smoke test of the benchmark scripts: each runs end to end in --quick mode and writes the JSON the
README's tables are made from. No timing is asserted (timings belong to the benchmarks)."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks import data_loading, hyperbolic_overhead
from benchmarks.common import print_table


def _machine_ok(machine: dict) -> None:
    assert machine["cpus"] >= 1 and machine["torch"]
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3


@pytest.mark.slow  # three tiny Lightning fits per mode plus the branch: ~15 s on 2 shared cores
def test_hyperbolic_overhead_quick_writes_json(tmp_path, capsys):
    hyperbolic_overhead.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "hyperbolic_overhead.json").read_text())
    assert result["quick"] is True
    rows = {(r["config"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {("quick", m) for m in ("baseline", "pooled", "token")}
    assert rows["quick", "baseline"]["ratio"] == 1.0
    for row in rows.values():
        assert row["steps"] == 2 and row["step_ms"] > 0 and math.isfinite(row["ratio"])
    variants = {(r["mode"], r["variant"]) for r in result["branch_rows"]}
    assert variants == {(m, v) for m in ("pooled", "token") for v in ("ours", "listings (geoopt)")}
    for row in result["branch_rows"]:
        assert row["fwd_bwd_ms"] > 0 and row["speedup_vs_listings"] > 0
    _machine_ok(result["machine"])
    out = capsys.readouterr().out
    assert "x baseline" in out and "x vs listings" in out


def test_data_loading_quick_writes_json(tmp_path, capsys):
    data_loading.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "data_loading.json").read_text())
    rows = {(r["source"], r["workers"]): r for r in result["rows"]}
    assert set(rows) == {(s, w) for s in ("pickles", "packed") for w in (0, 2)}
    for row in rows.values():
        assert row["samples_per_s"] > 0 and row["read_clips_per_s"] > 0 and row["peak_heap_mb"] >= 0
    speedup = result["speedup_packed_over_pickles"]
    assert speedup["loader_workers_0"] == pytest.approx(
        rows["packed", 0]["samples_per_s"] / rows["pickles", 0]["samples_per_s"])
    assert result["cache_mb"] > 0 and result["pack_seconds"] > 0
    _machine_ok(result["machine"])
    assert "samples/s" in capsys.readouterr().out


def test_print_table_aligns_columns(capsys):
    print_table("t", [{"a": "x", "b": 1.25}, {"a": "long", "b": 10.0}], [("a", "name", "s"), ("b", "value", ".1f")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "t"
    assert len({len(line) for line in lines[1:]}) == 1  # header and rows share the widths
    assert lines[2].endswith("1.2") and lines[3].split() == ["long", "10.0"]
