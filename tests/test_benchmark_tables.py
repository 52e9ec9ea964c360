"""The benchmark tables refuse comparisons that change more than one thing."""

import pytest

from benchmarks.tables import check_one_protocol, mean_se, standard_error
from tf_dpu import RunConfig


def _config(**changes):
    return RunConfig(**changes).resolved().to_dict()


def test_methods_ratios_and_seeds_may_differ():
    check_one_protocol([_config(method="fu"), _config(method="dpu", update_ratio=0.05, seed=2),
                        _config(method="gcpu"), _config(method="rpu", out_dir="x",
                                                        export_tflite=True, int8_bounds=False)])


@pytest.mark.parametrize("changes, setting", [
    ({"export_tflite": True, "out_dir": "x"}, "trains_in_int8_bounds"),
    ({"epochs": 20}, "epochs"),
    ({"layer_preselect": 0.65}, "layer_preselect"),
])
def test_a_second_difference_is_refused_by_name(changes, setting):
    with pytest.raises(ValueError, match=f"runs differ in {setting}"):
        check_one_protocol([_config(method="fu"), _config(method="dpu", **changes)])


def test_mean_and_standard_error():
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)
    assert mean_se([1.0, 3.0]) == "+2.00 ± 1.00" and mean_se([]) == "n/a"


def _run(mode, seed, accuracy, sent, setting="s"):
    return {"setting": setting, "mode": mode, "seed": seed, "test_accuracy": accuracy,
            "device_accuracy": accuracy, "sent_bytes": sent}


def _fus(seed, delta=True):
    """The FU runs every mode is measured against (FU last_round the better, at 91 %),
    and the warm-started FU sent as its delta patch (-0.1 points, 300 bytes a round)."""
    runs = [_run("fu same_init", seed, [0.5, 0.90, 0.90], [1000] * 3),
            _run("fu last_round", seed, [0.5, 0.91, 0.91], [1000] * 3)]
    if delta:
        runs.append(_run("fu last_round, delta patch", seed, [0.5, 0.909, 0.909],
                         [1000, 300, 300]))
    return runs


def test_target_bytes_are_compared_with_the_cheapest_fixed_k_that_does_as_well():
    from benchmarks.bytes_figures import gaps_and_bytes, key_figures
    runs = []
    for seed in (1, 2):
        runs += _fus(seed, delta=False) + [
            _run("dpu k=1%", seed, [0.5, 0.88, 0.88], [1000, 10, 10]),    # -3 points
            _run("dpu k=5%", seed, [0.5, 0.905, 0.905], [1000, 50, 50]),  # -0.5
            _run("dpu k=20%", seed, [0.5, 0.91, 0.91], [1000, 200, 200]),  # 0
            _run("target 0.5", seed, [0.5, 0.905, 0.905], [1000, 25, 25])]
    gap, sent = gaps_and_bytes(runs, "s", "dpu k=5%")[0]
    assert gap == pytest.approx(-0.5) and sent == 100     # against the better FU, rounds 1+
    figures = key_figures(runs)
    assert figures["target_gap_test_points"] == pytest.approx(-0.5)
    assert figures["bytes_target_vs_fixed_k"] == pytest.approx(0.5)   # 50 / 100 (k = 5 %)


def test_the_pareto_table_names_the_cheapest_mode_within_each_gap():
    from benchmarks.bytes_figures import pareto
    runs = []
    for seed in (1, 2):
        runs += _fus(seed) + [
            _run("dpu k=1%", seed, [0.5, 0.88, 0.88], [1000, 10, 10]),       # -3 points
            _run("dpu k=5%", seed, [0.5, 0.899, 0.899], [1000, 50, 50]),     # -1.1
            _run("target 0.5", seed, [0.5, 0.903, 0.903], [1000, 60, 60])]   # -0.7
    assert pareto(runs, "s") == {0.5: ("fu last_round, delta patch", 600),
                                 1.0: ("target 0.5", 120), 2.0: ("dpu k=5%", 100)}
    assert pareto(runs[:2], "s")[0.5] == ("fu last_round", 2000)


def test_the_product_is_held_to_the_cheapest_coded_delta_and_ternary_baseline():
    from benchmarks.bytes_figures import against_baselines
    runs = []
    for seed in (1, 2):
        runs += _fus(seed) + [
            _run("stc k=1%", seed, [0.5, 0.85, 0.85], [1000, 20, 20]),        # -6 points
            _run("stc k=5%", seed, [0.5, 0.902, 0.902], [1000, 100, 100]),    # -0.8
            _run("rpu k=1%", seed, [0.5, 0.91, 0.91], [1000, 5, 5]),          # a baseline
            _run("dpu k=1%", seed, [0.5, 0.88, 0.88], [1000, 10, 10]),        # -3
            _run("target 1.0", seed, [0.5, 0.901, 0.901], [1000, 40, 40])]    # -0.9
    found = against_baselines(runs, 1.0)["s"]
    assert (found["product_mode"], found["product_bytes"]) == ("target 1.0", 80)
    assert (found["stc_mode"], found["stc_bytes"], found["fu_delta_bytes"]) == ("stc k=5%", 200,
                                                                                 600)
    assert (found["vs_stc"], found["vs_fu_delta"], found["vs_best_baseline"]) == (0.4, 0.133,
                                                                                  0.4)
    no_stc = against_baselines([r for r in runs if r["mode"] != "stc k=5%"], 1.0)["s"]
    assert no_stc["vs_stc"] is None and no_stc["vs_best_baseline"] == 0.133


def test_how_often_a_target_holds_on_test_counts_rounds_after_round_0():
    from benchmarks.bytes_figures import holds_on_test
    runs = [dict(_run("target 0.5", 1, [], []), config={"target_gap": 0.5},
                 target_gap_test=[None, 0.5, 1.2, -0.3]),
            dict(_run("target 0.5", 2, [], []), config={"target_gap": 0.5},
                 target_gap_test=[9.0, 0.6, None, 0.0]),
            dict(_run("target 1.0", 1, [], []), config={"target_gap": 1.0},
                 target_gap_test=[None, 1.0, 1.01]),
            dict(_run("dpu k=1%", 1, [], []), config={"target_gap": None})]
    # 0.5 holds at 0.5 and -0.3 and 0.0, not at 1.2 or 0.6; round 0 and Nones do not count.
    assert holds_on_test(runs) == {"target 0.5": (0.6, 5), "target 1.0": (0.5, 2)}


def test_the_entropy_bound_of_a_real_patch():
    import numpy as np
    from benchmarks.patch_size import entropy_bound
    from hostile import TINY_MODEL
    from tflite_edge.create import create_patch
    from tflite_edge.model_file import ModelFile
    base = open(TINY_MODEL, "rb").read()
    view = ModelFile(base)
    target = bytearray(base)
    rng = np.random.RandomState(0)
    buffer = max((view.buffers[t.buffer] for t in view.tensors if t.type == 9
                  and view.buffers[t.buffer].length > 0), key=lambda b: b.length)
    for i in rng.choice(buffer.length, buffer.length // 10, replace=False):
        target[buffer.offset + i] = (target[buffer.offset + i] + rng.randint(1, 5)) % 256
    patch = create_patch(base, bytes(target), 1)
    e = entropy_bound(patch, base)
    coded = sum(c for c, _ in e["parts"].values())
    assert len(patch) == pytest.approx(e["fixed"] + coded / 8, abs=len(e["parts"]) + 1)
    assert 1.0 <= len(patch) / e["bound"] < 1.3


def test_the_codec_comparison_decode_checks_every_codec_on_a_real_pair():
    """Ours in both formats, NNCodec's coder at its best settings and the generic
    diffs, on the tiny model with a tenth of its kernel changed."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from benchmarks import codecs  # pylint: disable=import-outside-toplevel
    from conftest import missing_tool  # pylint: disable=import-outside-toplevel
    from hostile import TINY_MODEL  # pylint: disable=import-outside-toplevel
    from tflite_edge.model_file import ModelFile  # pylint: disable=import-outside-toplevel
    cabac = codecs.deep_cabac()
    if cabac is None:
        missing_tool("NNCodec (pip install --no-deps nncodec)")
    base = open(TINY_MODEL, "rb").read()
    buffer = ModelFile(base).buffers[4]
    target, rng = bytearray(base), np.random.RandomState(2)
    for i in rng.choice(buffer.length, 12, replace=False):
        target[buffer.offset + i] = (target[buffer.offset + i] + rng.randint(1, 9)) % 256
    row = codecs.compare(base, bytes(target), 1, cabac)
    assert 0 < row["format_5"] <= row["format_4"] <= row["format_3"] and row["nncodec"] > 0
    assert row["format_5_payload"] == row["format_5"] - codecs.ENVELOPE > 0
    assert row["best_generic"] > 0 and len(row["nncodec_settings"]) == 1
    figures = codecs.key_figures([dict(row, pair="tiny", round=1)])
    assert figures["patch_vs_nncodec"] == round(row["format_5"] / row["nncodec"], 4)
    assert figures["payload_vs_nncodec"] == round(row["format_5_payload"] / row["nncodec"], 4)
    # The decode check catches a stream that does not rebuild the delta.
    delta = np.zeros((4, 12), np.int32)
    delta[1, 3] = 5
    size, _ = codecs._nnc_layer(cabac, delta, np.zeros_like(delta))  # pylint: disable=protected-access
    assert size > 0
    deep, tools_off = cabac
    encoder = deep.Encoder()
    encoder.initCtxModels(1, 0)
    encoder.encodeLayer(delta.copy(), 0, 0, 0, 0, 0, np.zeros(4, np.int32), *tools_off(), 0, 0)
    stream = bytes(encoder.finish())
    other = delta.copy()
    other[1, 3] = 6
    assert codecs._nnc_decodes(deep, tools_off, stream, delta, delta, 1, 0, 0, 0)  # pylint: disable=protected-access
    assert not codecs._nnc_decodes(deep, tools_off, stream, other, other, 1, 0, 0, 0)  # pylint: disable=protected-access
    assert "payload / NNCodec" in codecs.markdown([dict(row, pair="tiny", round=1)], figures)


def test_modules_the_tests_import_define_no_flags():
    # A benchmark module that defines absl flags at import clashes with the
    # next one that does (both have --out), and benchmarks.__main__ imports
    # bytes and timing: only their command lines may define flags.
    import importlib  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel
    for name in ("benchmarks.bytes_figures", "benchmarks.user_model", "benchmarks.fuzz",
                 "benchmarks.tables", "benchmarks.patch_size", "benchmarks.jvm",
                 "benchmarks.generic_diffs",
                 "benchmarks.bytes", "benchmarks.timing", "benchmarks.throughput",
                 "benchmarks.scaling"):
        importlib.import_module(name)
    defined = flags.FLAGS.flags_by_module_dict()
    assert not [module for module in defined if module.startswith("benchmarks")]


def test_scaling_models_store_every_layer_and_patch_with_every_applier():
    # 100k has two 256x256 kernels: drawn from one seed, the converter stored
    # them once and re-quantizing a layer on its own was refused.
    from benchmarks import scaling  # pylint: disable=import-outside-toplevel
    (row,) = scaling.measure(("100k",), (0.01,))
    assert row["model_bytes"] > row["parameters"]
    assert 0 < row["patch_bytes"] < 0.05 * row["model_bytes"]
    assert row["apply_c_s"] > 0 and (row["apply_jvm_s"] or 0) >= 0


def test_generic_diffs_at_their_best_settings_rebuild_the_target():
    """Every generic tool's size is decode-checked; the best is the smallest of them,
    and the bytes table and its ratios carry them."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from benchmarks import generic_diffs, patch_size  # pylint: disable=import-outside-toplevel
    from hostile import TINY_MODEL  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch  # pylint: disable=import-outside-toplevel
    from tflite_edge.model_file import ModelFile  # pylint: disable=import-outside-toplevel
    base = open(TINY_MODEL, "rb").read()
    buffer = ModelFile(base).buffers[4]
    files, rng = [base], np.random.RandomState(1)
    for _ in range(2):
        target = bytearray(files[-1])
        for i in rng.choice(buffer.length, 5, replace=False):
            target[buffer.offset + i] = (target[buffer.offset + i] + 3) % 256
        files.append(bytes(target))
    sizes = generic_diffs.compare(files[0], files[1])
    tools = {k: v for k, v in sizes.items() if k not in ("detools_setting", "best", "best_tool")}
    assert set(tools) == {"detools", "bsdiff4", "zstd --patch-from (level 22)",
                          "xz -9e of the XOR"}
    assert sizes["best"] == min(tools.values()) and sizes["detools_setting"].count("/") == 2
    patches = [None] + [create_patch(files[r - 1], files[r], r) for r in (1, 2)]
    table = patch_size.compare(files, patches)
    ratios = patch_size.ratios(table)
    assert ratios["patch_vs_best_generic"] == pytest.approx(
        table["total"]["patch"] / table["total"]["best_generic"], rel=1e-3)
    assert ratios["patch_vs_best_generic_worst_pair"] >= ratios["patch_vs_best_generic"] - 1e-9
    assert "detools (best setting)" in patch_size.markdown(table)
    # A tool whose decoder does not rebuild the target is an error, never a size.
    broken = dict(generic_diffs.OTHERS)
    generic_diffs.OTHERS["xz -9e of the XOR"] = lambda b, t: (_ for _ in ()).throw(
        AssertionError("does not rebuild"))
    try:
        with pytest.raises(AssertionError):
            generic_diffs.compare(files[0], files[1])
    finally:
        generic_diffs.OTHERS.clear()
        generic_diffs.OTHERS.update(broken)
