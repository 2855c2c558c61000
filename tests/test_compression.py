"""The structural variants (lowrank, pruned), composites and the onnxruntime backend through
the quantize job on a tiny synthetic store: each builds a smaller model whose file loads
back to the same outputs, is fine-tuned on the train store (not a cost-only model), and
every eval row records its backend."""
import math
import warnings

import onnx
import pandas as pd
import pytest
import torch
from onnx import numpy_helper

from alfred_edge import quantize as Q
from alfred_edge.backends.onnx_export import GRAPH_NAMES
from alfred_edge import variants
from alfred_edge.models import save_model
from alfred_edge.quantize import structure
from alfred_edge.quantize.onnx_variants import load_onnx_variant
from model_inputs import one_thread, random_batch, tiny_model, tiny_vocab, write_fp32  # noqa: F401 (fixture)

warnings.filterwarnings("ignore", message=r".*(deprecated|TypedStorage).*")

SPLITS = ["valid_seen", "valid_unseen"]
FINETUNE = {"steps": 2, "batch": 4, "lr": 1e-3, "seed": 0, "mask_steps_per_batch": 4}
SETTINGS = {"lowrank": {"energy": 0.9, "rank": None, "min_parameters": 100, "finetune": FINETUNE},
            "pruned": {"keep": 0.5, "groups": ["frame", "mask", "ffn"], "finetune": FINETUNE},
            "int8_static": {"batches": 2, "batch": 4}}  # fmt: skip


def run_job(fp32_path, variant, synthetic_store, backend="eager"):
    folder = fp32_path.parent
    if backend == "eager":
        path, table = folder / f"{variant}.pt", folder / f"{variant}.eval.parquet"
        parent = folder / f"{variants.parent(variant)}.pt"
    else:
        path, table = folder / f"{variant}.onnx", folder / f"{variant}.{backend}.eval.parquet"
        parent = folder / f"{variants.float_part(variant)}.pt"
    Q.quantize_job(fp32_path, variant, synthetic_store, SPLITS, None if variant == "fp32" and backend == "eager" else path,
                   table, batch_size=4, backend=backend, parent_path=parent, settings=SETTINGS,
                   train_store=synthetic_store / "train")
    return pd.read_parquet(table).iloc[0], path


def parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("step", ["lowrank", "pruned"])
def test_structural_step_shrinks_the_model_and_its_file_loads_back(step, name, tmp_path):
    model = tiny_model(name)
    changed = structure.build_structure(model, step, {**SETTINGS[step], "finetune": {"steps": 0}})
    assert parameters(changed) < parameters(model)
    assert changed.compression[0]["step"] == step
    header = {"model": name, "config": model.config, "vocab_sizes": model.vocab_sizes, "vocab_digest": "d"}
    save_model(model, tmp_path / "fp32.pt")
    Q.save_variant(changed, step, Q.model_header(Q.read_variant_file(tmp_path / "fp32.pt")), tmp_path / "v.pt")
    loaded = Q.load_variant(tmp_path / "v.pt", "cpu")
    batch = random_batch(tiny_vocab())
    with torch.no_grad():
        for key, value in changed(batch).items():
            torch.testing.assert_close(loaded(batch)[key], value, atol=0, rtol=0)
    assert header["model"] == loaded.name


def test_lowrank_at_full_energy_computes_the_same_function():
    """The factorisation itself loses nothing: what the energy drops is the only change."""
    model = tiny_model("lstm")
    changed = structure.build_structure(model, "lowrank", {"energy": 1.0, "rank": None, "min_parameters": 100,
                                                           "finetune": {"steps": 0}})
    changed_layers = changed.compression[0]["layers"]
    assert changed_layers == {}  # full rank saves nothing: every layer stays
    ranked = structure.build_structure(model, "lowrank", {"energy": None, "rank": 2, "min_parameters": 100,
                                                          "finetune": {"steps": 0}})
    assert set(ranked.compression[0]["layers"].values()) == {2}
    batch = random_batch(tiny_vocab())
    with torch.no_grad():
        close = torch.allclose(ranked(batch)["action_logits"], model(batch)["action_logits"], atol=1e-3)
    assert not close  # rank 2 of ~30 really changes the function


def test_composite_names():
    assert variants.name_error("lowrank+int8_dynamic") is None
    assert variants.name_error("pruned+lowrank+int8_static") is None
    assert "comes last" in variants.name_error("int8_dynamic+lowrank")
    assert "in the order" in variants.name_error("lowrank+pruned")
    assert "not in the registry" in variants.name_error("lowrank+int4")
    assert variants.parent("pruned+lowrank+int8_dynamic") == "pruned+lowrank"
    assert variants.float_part("pruned+int8_dynamic") == "pruned"
    assert variants.backend_error("int8_static", "eager") is None
    assert "not built for onnxruntime" in variants.backend_error("lowrank+fp16", "onnxruntime")


@pytest.fixture(scope="module")
def lstm_jobs(synthetic_store, tmp_path_factory):
    """fp32 (both backends), lowrank, pruned, lowrank+int8_dynamic, int8_static (eager),
    int8_dynamic, int8_static and fp16 (onnxruntime) of one tiny lstm: {(variant, backend): (row, path)}."""
    fp32 = write_fp32(tmp_path_factory.mktemp("jobs"), synthetic_store / "vocab.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    jobs = [("fp32", "eager"), ("lowrank", "eager"), ("pruned", "eager"), ("lowrank+int8_dynamic", "eager"),
            ("fp32", "onnxruntime"), ("int8_dynamic", "onnxruntime"), ("int8_static", "onnxruntime"),
            ("int8_static", "eager"), ("fp16", "onnxruntime")]
    yield fp32, {(v, b): run_job(fp32, v, synthetic_store, b) for v, b in jobs}
    torch.set_num_threads(threads)


def test_every_eval_row_records_its_backend(lstm_jobs):
    _, rows = lstm_jobs
    for (variant, backend), (row, _) in rows.items():
        assert (row["variant"], row["backend"]) == (variant, backend)


def test_structural_variants_are_smaller_evaluated_and_fine_tuned(lstm_jobs, caplog):
    fp32, rows = lstm_jobs
    for variant in ("lowrank", "pruned", "lowrank+int8_dynamic"):
        row = rows[(variant, "eager")][0]
        assert row["status"] == "ok", row["reason"]
        assert row["size_ratio"] < 1.0 and 0.0 <= row["accuracy_valid_seen"] <= 1.0
    fine_tuned = Q.load_variant(rows[("lowrank", "eager")][1], "cpu")
    unturned = structure.build_structure(Q.load_variant(fp32, "cpu"), "lowrank", {**SETTINGS["lowrank"],
                                                                                  "finetune": {"steps": 0}})
    differ = [not torch.equal(a, b) for a, b in zip(fine_tuned.state_dict().values(), unturned.state_dict().values())]
    assert any(differ)  # the fine-tune changed the weights
    composite = rows[("lowrank+int8_dynamic", "eager")][0]
    assert composite["file_size_bytes"] < rows[("lowrank", "eager")][0]["file_size_bytes"]


def test_int8_variants_are_close_to_fp32(lstm_jobs):
    _, rows = lstm_jobs
    fp32 = rows[("fp32", "eager")][0]
    ort_fp32 = rows[("fp32", "onnxruntime")][0]
    assert ort_fp32["accuracy_valid_seen"] == pytest.approx(fp32["accuracy_valid_seen"], abs=1e-9)
    for variant, backend in (("int8_dynamic", "onnxruntime"), ("int8_static", "onnxruntime"), ("int8_static", "eager")):
        row = rows[(variant, backend)][0]
        assert row["status"] == "ok", row["reason"]
        assert row["file_size_bytes"] < rows[("fp32", backend)][0]["file_size_bytes"]
        assert abs(row["accuracy_valid_seen"] - fp32["accuracy_valid_seen"]) < 0.05


def test_onnxruntime_int8_weights_stay_within_7_bits(lstm_jobs):
    """Both quantizers' (reduce_range: no int16 saturation in x86 kernels without VNNI)."""
    _, rows = lstm_jobs
    for variant in ("int8_dynamic", "int8_static"):
        folder = rows[(variant, "onnxruntime")][1]
        weights = [numpy_helper.to_array(tensor) for graph in GRAPH_NAMES
                   for tensor in onnx.load(folder / f"{graph}.onnx").graph.initializer
                   if tensor.data_type == onnx.TensorProto.INT8]  # fmt: skip
        assert weights, variant
        assert all(-64 <= w.min() and w.max() <= 64 for w in weights), variant


def test_a_variant_a_backend_cannot_run_is_a_row_saying_why(lstm_jobs):
    _, rows = lstm_jobs
    row, path = rows[("fp16", "onnxruntime")]
    assert row["status"] == "unavailable" and "fp16 is not built for onnxruntime" in row["reason"]
    assert math.isnan(row["accuracy_valid_seen"])
    with pytest.raises(Q.VariantUnavailable, match="not built for onnxruntime"):
        load_onnx_variant(path)


def test_cost_only_model_is_not_fine_tuned(synthetic_store, tmp_path, monkeypatch):
    from alfred_edge.quantize import finetune

    def fail(*args, **kwargs):
        raise AssertionError("a cost-only model must not be fine-tuned")

    monkeypatch.setattr(finetune, "finetune", fail)
    fp32 = write_fp32(tmp_path, synthetic_store / "vocab.json", cost_only=True)
    row, path = run_job(fp32, "pruned", synthetic_store)
    assert (row["status"], row["reason"]) == ("ok", "untrained: cost only")
    assert row["file_size_bytes"] == path.stat().st_size
