"""The benchmarks' own flags that size a run, on a tiny protocol (the full runs are minutes)."""

import json
import os
import subprocess
import sys

from conftest import ROOT

TINY = ["--dataset=digits", "--validation_samples=100", "--rounds=2", "--initial_samples=200",
        "--samples_per_round=100", "--epochs=1", "--seed=1"]


def _benchmark(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=600)


def test_timing_times_the_run_of_its_flag_file_and_keeps_the_fastest(tmp_path):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join(TINY) + "\n")
    done = _benchmark("benchmarks.timing", f"--run_flagfile={flagfile}", "--repeats=2")
    assert done.returncode == 0, done.stderr[-2000:]
    phases = json.loads(done.stdout)
    assert phases["total_seconds"] >= phases["startup_seconds"] + phases["training_seconds"] > 0
    assert phases["runs"] == 2 and phases["slowest_total_seconds"] >= phases["total_seconds"]
    # The flag file's run, not the default reference one (8 rounds of 30 epochs: minutes).
    assert phases["total_seconds"] < 120


def test_reproduce_runs_the_methods_ratios_and_seeds_it_is_given(tmp_path):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join(TINY) + "\n")
    for product in ("false", "true"):
        out = tmp_path / f"product_{product}"
        done = _benchmark("benchmarks.reproduce", f"--flagfile={flagfile}", "--seeds=1,2"
                          if product == "false" else "--seeds=1", "--ratios=0.05",
                          "--methods=dpu", f"--product_default={product}", f"--out={out}")
        assert done.returncode == 0, done.stderr[-2000:]
        found = json.loads((tmp_path / f"product_{product}.json").read_text())["runs"]
        jobs = sorted((r["method"], r["ratio"] or 0, r["deployment"], r["seed"]) for r in found)
        if product == "false":
            assert jobs == [("dpu", 0.05, "partial", 1), ("dpu", 0.05, "partial", 2),
                            ("fu", 0, "partial", 1), ("fu", 0, "partial", 2)]
        else:   # the product defaults at k = 0.01 on the same schedule, for FU, DPU and RPU
            assert jobs == [("dpu", 0.01, "full", 1), ("dpu", 0.05, "partial", 1),
                            ("fu", 0, "full", 1), ("fu", 0, "partial", 1),
                            ("rpu", 0.01, "full", 1)]
            full = [r for r in found if r["deployment"] == "full"]
            assert all(r["config"]["initial_deployment"] == "full" for r in full)
        assert all(len(r["test_accuracy"]) == 2 for r in found)
        assert len(found) == len(jobs)


def test_generic_diffs_runs_the_rounds_and_epochs_it_is_given(tmp_path):
    out = tmp_path / "generic"
    done = _benchmark("benchmarks.generic_diffs", f"--out={out}", "--rounds=2", "--epochs=1")
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "generic.json").read_text())
    assert found["rounds"] == 2 and found["epochs"] == 1
    rows = found["bytes_table"]["rows"]
    assert [r["round"] for r in rows] == [1]        # one patch: round 1 of rounds 0-1
    assert rows[0]["best_generic"] == min(rows[0][k] for k in ("detools", "bsdiff4", "zstd",
                                                                 "xz_xor"))
    assert found["patch_vs_best_generic"] == round(rows[0]["patch"] / rows[0]["best_generic"], 4)
    assert "best generic" in (tmp_path / "generic.md").read_text()


def test_bytes_runs_the_settings_seeds_and_modes_it_is_given_and_merges_them(tmp_path):
    out = tmp_path / "bytes"
    done = _benchmark("benchmarks.bytes", "--quick", "--settings=digits-mlp", "--seeds=1",
                      "--modes=fu,stc", f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    first = json.loads((tmp_path / "bytes.json").read_text())
    assert first["quick"] and {(r["setting"], r["seed"]) for r in first["runs"]} == {
        ("digits-mlp", 1)}
    # --quick keeps one ternary ratio; the full comparison four.
    assert sorted(r["mode"] for r in first["runs"]) == [
        "fu last_round", "fu last_round, delta patch", "fu same_init", "stc k=5%"]
    done = _benchmark("benchmarks.bytes", "--settings=digits-mlp", "--seeds=1",
                      "--modes=stc,dpu ternary k=1%", "--merge", f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    merged = json.loads((tmp_path / "bytes.json").read_text())["runs"]
    stc = {r["mode"]: r for r in merged if r["mode"].startswith("stc")}
    assert set(stc) == {"stc k=2%", "stc k=5%", "stc k=10%", "stc k=20%"}
    assert len(merged) == 3 + 4 + 1     # the FU runs kept, k = 5 % measured again, not twice
    ternary = [r for r in merged if r["mode"] == "dpu ternary k=1%"]
    assert [r["config"]["value_grid"] for r in ternary] == ["ternary"]
    assert all(r["config"]["method"] == "stc" and f"k={100 * r['config']['update_ratio']:g}%"
               in name for name, r in stc.items())
    # More ternary elements cost more bytes.
    assert sum(stc["stc k=2%"]["sent_bytes"][1:]) < sum(stc["stc k=20%"]["sent_bytes"][1:])
    table = (tmp_path / "bytes.md").read_text()
    assert "| stc k=20% |" in table and (tmp_path / "bytes_digits-mlp.png").stat().st_size
    missing = _benchmark("benchmarks.bytes", "--modes=stc", "--merge",
                         f"--out={tmp_path / 'none'}")
    assert missing.returncode != 0 and "--merge: cannot read" in missing.stderr
    unknown = _benchmark("benchmarks.bytes", "--modes=sct", f"--out={tmp_path / 'none'}")
    assert unknown.returncode != 0 and "--modes: no mode's name starts with sct" in unknown.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr
