"""The quantize job on a tiny synthetic store: each variant's file and its one-row table
(the columns the report reads), and a row that says why when a variant cannot be built
or evaluated, while the job itself succeeds."""
import math
import warnings

import pandas as pd
import pytest
import torch

from alfred_edge import quantize as Q
from alfred_edge.quantize import conversions
from model_inputs import JOB_SIZES, one_thread, write_fp32  # noqa: F401 (fixture)

warnings.filterwarnings("ignore", message=r".*(deprecated|TypedStorage).*")

SPLITS = ["valid_seen", "valid_unseen"]


@pytest.fixture
def fp32_path(synthetic_store, tmp_path):
    return write_fp32(tmp_path, synthetic_store / "vocab.json")


def run_job(fp32_path, variant, synthetic_store):
    folder = fp32_path.parent
    variant_path = None if variant == "fp32" else folder / f"{variant}.pt"
    table = folder / f"{variant}.eval.parquet"
    Q.quantize_job(fp32_path, variant, synthetic_store, SPLITS, variant_path, table, batch_size=4)
    return pd.read_parquet(table), variant_path


@pytest.fixture(scope="module")
def jobs(synthetic_store, tmp_path_factory):
    """fp32, int8_dynamic and bf16 jobs of one model: {variant: (table, variant file)}."""
    fp32_path = write_fp32(tmp_path_factory.mktemp("jobs"), synthetic_store / "vocab.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield fp32_path, {variant: run_job(fp32_path, variant, synthetic_store) for variant in ("fp32", "int8_dynamic", "bf16")}
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", ["fp32", "int8_dynamic", "bf16"])
def test_job_writes_variant_and_table(jobs, variant):
    fp32_path, results = jobs
    table, variant_path = results[variant]
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["model"], row["variant"], row["status"], row["reason"]) == ("lstm", variant, "ok", "")
    file = fp32_path if variant == "fp32" else variant_path
    assert row["file_size_bytes"] == file.stat().st_size
    assert row["file_size_mb"] == pytest.approx(file.stat().st_size / 1e6)
    assert row["size_ratio"] == pytest.approx(file.stat().st_size / fp32_path.stat().st_size)
    assert row["engine"] == (torch.backends.quantized.engine if variant == "int8_dynamic" else "")
    for split in SPLITS:
        assert 0.0 <= row[f"accuracy_{split}"] <= 1.0
        assert 0.0 <= row[f"action_f1_{split}"] <= 1.0
        assert 0.0 <= row[f"mask_iou_{split}"] <= 1.0
        assert row[f"n_annotations_{split}"] > 0
    if variant != "fp32":
        assert isinstance(Q.load_variant(variant_path, "cpu"), torch.nn.Module)


def test_fp32_job_writes_no_second_model_file(jobs):
    fp32_path, _ = jobs
    assert sorted(p.name for p in fp32_path.parent.glob("fp32*")) == ["fp32.eval.parquet", "fp32.pt"]


def test_int8_accuracy_close_to_fp32(jobs):
    results = jobs[1]
    fp32, int8 = (results[v][0].iloc[0] for v in ("fp32", "int8_dynamic"))
    assert int8["size_ratio"] < 1.0
    assert abs(int8["accuracy_valid_seen"] - fp32["accuracy_valid_seen"]) < 0.05


def test_variant_that_cannot_be_built_gets_a_row_and_a_file_with_the_reason(fp32_path, synthetic_store, monkeypatch):
    def unavailable(variant, device):
        raise Q.VariantUnavailable(variant, "float16 kernels missing on cpu")

    monkeypatch.setattr(conversions, "probe_low_precision", unavailable)
    table, variant_path = run_job(fp32_path, "fp16", synthetic_store)
    row = table.iloc[0]
    assert (row["status"], row["reason"]) == ("unavailable", "float16 kernels missing on cpu")
    assert math.isnan(row["accuracy_valid_seen"]) and math.isnan(row["file_size_bytes"])
    with pytest.raises(Q.VariantUnavailable, match="float16 kernels missing on cpu"):
        Q.load_variant(variant_path, "cpu")  # the benchmark records a skipped cell


def test_variant_whose_evaluation_fails_gets_a_failed_row(fp32_path, synthetic_store, monkeypatch):
    import alfred_edge.evaluate

    def broken(model, *args, **kwargs):
        if next(model.parameters()).dtype == torch.bfloat16:
            raise RuntimeError("'addmm' not implemented for 'BFloat16'")
        return real(model, *args, **kwargs)

    real = alfred_edge.evaluate.evaluate
    monkeypatch.setattr(alfred_edge.evaluate, "evaluate", broken)
    row = run_job(fp32_path, "bf16", synthetic_store)[0].iloc[0]
    assert row["status"] == "failed"
    assert row["reason"] == "evaluation failed: RuntimeError: 'addmm' not implemented for 'BFloat16'"
    assert row["file_size_bytes"] > 0 and math.isnan(row["accuracy_valid_seen"])


def test_fp32_evaluation_failure_is_not_hidden(fp32_path, synthetic_store, monkeypatch):
    import alfred_edge.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(alfred_edge.evaluate, "evaluate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_job(fp32_path, "fp32", synthetic_store)
    assert not (fp32_path.parent / "fp32.eval.parquet").exists()


def test_a_cost_only_model_is_quantized_but_never_evaluated(synthetic_store, tmp_path, monkeypatch):
    """rule untrained_model's file (random weights, seeded) says cost_only; its variants are
    built and sized like any other, but no accuracy is computed for them: the row says why."""
    import alfred_edge.evaluate
    from alfred_edge.train import untrained_model

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cost-only model was evaluated")

    monkeypatch.setattr(alfred_edge.evaluate, "evaluate", must_not_run)
    paths = [tmp_path / name / "lstm_big" / "fp32.pt" for name in ("a", "b")]
    for path in paths:
        path.parent.mkdir(parents=True)
        untrained_model("lstm", JOB_SIZES["lstm"], synthetic_store, path)
    first, second = (torch.load(p, weights_only=True)["state_dict"] for p in paths)
    assert all(torch.equal(first[k], second[k]) for k in first)  # seeded: the same weights each run
    assert Q.read_variant_file(paths[0])["cost_only"] is True
    for variant in ("fp32", "int8_dynamic"):
        table, variant_path = run_job(paths[0], variant, synthetic_store)
        row = table.iloc[0]
        assert (row["model"], row["status"], row["reason"]) == ("lstm_big", "ok", "untrained: cost only")
        assert row["file_size_bytes"] == (variant_path or paths[0]).stat().st_size
        assert all(math.isnan(row[f"accuracy_{split}"]) for split in SPLITS)
