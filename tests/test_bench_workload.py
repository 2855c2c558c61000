"""The real workload on a tiny store and tiny models: B episodes really in the batch, frames
read into RAM equal to the memory-mapped ones, and a whole cell measured in-process for each
model (the transformer through its own step path)."""
import json
import subprocess
import sys

import pytest
import torch

from alfred_edge.bench import child, roofline, runner, workloads
from alfred_edge.data.loader import StoreDataset
from model_inputs import build_store

TINY = {"lstm": {"demb": 16, "dhid": 16, "dframe": 32}, "transformer": {"d_model": 16, "heads": 2, "encoder_layers": 1,
                                                                        "decoder_layers": 1, "ffn": 32, "dframe": 32}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("bench_store"), {"train": 3, "valid_seen": 2})


def test_store_batches_hold_b_episodes_cycling_when_the_split_is_small(store):
    n = json.loads((store / "valid_seen" / "meta.json").read_text())["n_annotations"]
    batches = workloads.store_batches(str(store / "valid_seen"), 4, max_steps=2, features="mmap")
    assert len(batches) == workloads.EPISODE_POOL // 4
    for batch in batches:
        assert batch["lang"].shape[0] == batch["frames"].shape[0] == 4
        assert batch["frames"].shape[1:] == batches[0]["frames"].shape[1:] and batch["frames"].shape[1] <= 2
        assert batch["frames"].shape[2:] == (512, 7, 7)
    big_b = max(n + 2, workloads.EPISODE_POOL)
    [big] = workloads.store_batches(str(store / "valid_seen"), big_b, max_steps=2, features="mmap")
    assert big["frames"].shape[0] == big_b and big["distinct_episodes"] == n


def test_every_batch_size_up_to_the_pool_decodes_the_same_episodes(store):
    def pool(batch_size):
        batches = workloads.store_batches(str(store / "train"), batch_size, max_steps=2, features="mmap")
        return torch.cat([b["lang_lengths"] for b in batches]), torch.cat([b["frames"] for b in batches])

    lengths_1, frames_1 = pool(1)
    assert len(lengths_1) == workloads.EPISODE_POOL and frames_1.shape[1] == 2
    for batch_size in (2, 4, 8):
        lengths, frames = pool(batch_size)
        assert torch.equal(lengths, lengths_1) and torch.equal(frames, frames_1)
    assert pool(3)[0].tolist()[:8] == lengths_1.tolist()  # 3 batches of 3: the pool and one more


def test_store_batches_read_only_the_pool_of_annotations(store):
    whole = StoreDataset(store / "train").annotations
    assert whole.num_rows > workloads.EPISODE_POOL
    kept = workloads.store_batches(str(store / "train"), 2, 1, "mmap")[0]["_dataset"].annotations
    assert kept.equals(whole.slice(0, workloads.EPISODE_POOL))
    assert StoreDataset(store / "train", first=whole.num_rows + 5).annotations.equals(whole)


def test_features_in_ram_equal_the_memory_mapped_ones(store):
    """features changes the RAM a cell holds, not what its timed loop reads: both give the same
    float32 batches, each its own copy (writable: not a view of the store's read-only map)."""
    mmap = workloads.store_batches(str(store / "valid_seen"), 3, max_steps=3, features="mmap")
    ram = workloads.store_batches(str(store / "valid_seen"), 3, max_steps=3, features="ram")
    for m, r in zip(mmap, ram, strict=True):
        assert torch.equal(m["frames"], r["frames"]) and torch.equal(m["lang"], r["lang"])
        assert m["frames"].dtype == torch.float32
        m["frames"].add_(1.0)
    with pytest.raises(ValueError, match="mmap or ram"):
        workloads.store_batches(str(store / "valid_seen"), 1, 1, "disk")


def test_store_batch_marks_the_interaction_actions_of_its_vocabulary(store):
    vocab = json.loads((store / "vocab.json").read_text())["action_low"]
    marked = workloads.store_batches(str(store / "valid_seen"), 1, 1, "mmap")[0]["mask_actions"].tolist()
    assert {name for name, m in zip(vocab, marked) if m} == {
        name for name in vocab if not name.startswith(("MoveAhead", "Rotate", "Look", "<<"))}
    assert any(marked) and not all(marked)


def _recorded_decode(workload_mode):
    """One batch of the fake model's decode, recording at each step the previous action fed,
    the rows that decoded a mask and the action chosen."""
    workload = workloads.make_workload({"model": "fake", "device": "cpu", "workload": workload_mode}, 4, 5)
    workload.load()
    workload.prepare()
    step, steps = workload.model.step, []

    def recording_step(state, frames_t, prev_action, *, with_mask):
        logits, mask, state = step(state, frames_t, prev_action, with_mask=with_mask)
        steps.append({"fed": prev_action, "rows": with_mask(logits), "chosen": logits.argmax(1), "masks": mask.shape[0]})
        return logits, mask, state

    workload.model.step = recording_step
    workload.start_timing()
    workload.run_batch()
    return workload, steps


def test_the_expert_workload_feeds_the_gold_actions_and_decodes_the_experts_masks():
    workload, steps = _recorded_decode("expert")
    _, _, _, actions, interact = workload.inputs[0]
    assert len(steps) == 5 and steps[0]["fed"] is None  # step 0 starts from the learned `go`
    for t, step in enumerate(steps):
        if t:
            assert torch.equal(step["fed"], actions[:, t - 1])
        assert torch.equal(step["rows"], interact[:, t]) and step["masks"] == int(interact[:, t].sum())
    assert workload.info()["mask_fraction"] == pytest.approx(interact[:, :5].float().mean().item())
    assert "chosen_actions" not in workload.info()


def test_the_work_recorded_is_one_pass_over_the_pool_however_long_the_loop_runs():
    """A variant whose loop gets through more batches records the same mask_fraction: that of
    the pool (the loop's first pass), not of the batches it happened to run."""
    workload = workloads.make_workload({"model": "fake", "device": "cpu", "workload": "expert"}, 4, 5)
    workload.load()
    workload.prepare()
    pool = torch.cat([interact[:, :5] for *_, interact in workload.inputs])
    first = workload.inputs[0][4][:, :5]
    assert workload.batches_per_pass == 2 and first.float().mean() != pool.float().mean()
    workload.start_timing()
    for _ in range(3):  # a pass and a half: the first batch twice
        workload.run_batch()
    assert workload.info()["mask_fraction"] == pytest.approx(pool.float().mean().item())
    assert (workload.steps, workload.step_rows) == (2 * 5, 2 * 5 * 4)


def test_the_policy_workload_feeds_the_models_actions_and_decodes_the_masks_they_need():
    workload, steps = _recorded_decode("policy")
    interacts = torch.arange(12) % 2 == 1  # fake_batches' interaction actions
    assert all(step["fed"] is None for step in steps)  # the model's own last argmax (its state)
    for step in steps:
        assert torch.equal(step["rows"], interacts[step["chosen"]]) and step["masks"] == int(step["rows"].sum())
    assert workload.info()["chosen_actions"] == [a for step in steps for a in step["chosen"].tolist()]


def test_the_agreement_with_fp32_is_the_share_of_equal_actions():
    assert runner.action_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert runner.action_agreement([1, 2], [1, 2, 3]) is None


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine is shared with other jobs
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_a_cell_of_a_real_model_measures_b_episodes(store, tmp_path, name, one_thread):
    from alfred_edge.models import build_model, save_model

    vocab = json.loads((store / "vocab.json").read_text())
    path = tmp_path / name / "fp32.pt"
    save_model(build_model(name, TINY[name], vocab), path)
    spec = {"host": "t", "model": name, "architecture": name, "workload": "expert", "variant": "fp32",
            "device": "cpu", "batch_size": 3, "features": "mmap",
            "threads": 1, "max_steps": 2, "timeout_s": 60, "model_path": str(path), "fp32_path": str(path),
            "store_dir": str(store / "valid_seen"),
            "loop": {"min_iterations": 2, "min_duration_s": 0.0, "max_duration_s": 60.0, "warmup_iterations": 0},
            "power": {"interval_s": 0.05, "idle_s": 0.0}}
    row = child.measure_cell(spec, torch)
    assert row["observed_batch_size"] == 3 and row["iterations"] >= 2
    assert 1 <= row["steps_per_episode"] <= 2
    assert row["flops_per_step"] > 0
    assert row["weight_bytes_per_step"] == pytest.approx(
        row["step_weight_bytes"] + row["mask_step_fraction"] * row["mask_decoder_weight_bytes"])
    assert row["encode_latency_p50_ms"] < row["latency_p50_ms"]
    assert 0.0 <= row["mask_fraction"] <= 1.0 and row["mask_flops"] > 1e6  # one 300x300 mask decoder row
    # The pipeline counts once per model on the first episode (scripts/flops.py): same columns.
    first = workloads.store_batches(spec["store_dir"], 1, 2, "mmap")[0]
    counts = roofline.episode_flops(torch, workloads.load_model_file(str(path), "cpu"), first["lang"],
                                    first["lang_lengths"], first["frames"].float())
    given = roofline.flop_columns({**spec, "flops": counts}, _decoded(spec), torch)
    assert {k: given[k] for k in FLOP_COLUMNS} == {k: row[k] for k in FLOP_COLUMNS}


FLOP_COLUMNS = ("encode_flops", "mask_flops", "flops_per_step")


def _decoded(spec):
    """The cell's workload after one pass over its pool (so its mask counts are those of the
    cell's timed passes)."""
    workload = workloads.make_workload(spec, spec["batch_size"], spec["max_steps"])
    workload.load()
    workload.prepare()
    for _ in range(workload.batches_per_pass):
        workload.run_batch()
    return workload


def test_the_transformers_import_is_not_in_the_timed_model_load():
    """make_workload imports the model's code, so load_time_ms times the load alone (the
    transformer's first import of transformers takes seconds)."""
    code = ("import sys; from alfred_edge.bench import workloads; "
            "workloads.make_workload({'model': 'transformer', 'architecture': 'transformer', 'workload': 'expert', "
            "'device': 'cpu', 'model_path': 'm.pt', 'store_dir': 's', 'features': 'mmap'}, 1, 1); "
            "print('transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_a_steps_weight_bytes_are_its_modules_parameters(name, store):
    """fp32: 4 bytes a parameter and buffer of every module but the language encoder's (read
    once per episode) and the mask decoder's (counted apart); int8: the large layers in a byte."""
    from alfred_edge.models import build_model
    from alfred_edge.quantize.conversions import int8_targets, make_variant

    model = build_model(name, TINY[name], json.loads((store / "vocab.json").read_text()))
    skipped = (*model.ENCODE_ONLY, model.MASK_DECODER)

    def fp32_bytes(keep):
        tensors = [*model.named_parameters(), *model.named_buffers()]  # a tied weight once
        return sum(t.numel() * 4 for n, t in tensors if keep(n) and t.dtype == torch.float32) + \
            sum(t.numel() * t.element_size() for n, t in tensors if keep(n) and t.dtype != torch.float32)

    def under(n, prefixes):
        return any(n == p or n.startswith(p + ".") for p in prefixes)

    step, mask = roofline.step_weight_bytes(model)
    assert step == fp32_bytes(lambda n: not under(n, skipped))
    assert mask == fp32_bytes(lambda n: under(n, (model.MASK_DECODER,)))
    int8_step, int8_mask = roofline.step_weight_bytes(make_variant(model, "int8_dynamic"))
    quantized_weights = [w for target in int8_targets(model) if not under(target, skipped)
                         for n, w in model.get_submodule(target).named_parameters() if n.startswith("weight")]
    assert quantized_weights and step - int8_step == 3 * sum(w.numel() for w in quantized_weights)  # 4 bytes -> 1
    assert int8_mask < mask


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_an_onnxruntime_cell_measures_the_exported_graphs(store, tmp_path, name, one_thread):
    """The same workload run by ONNX Runtime's CPU provider: B episodes, the step's weight bytes
    those of its step and mask graphs, backend and provider in the row."""
    pytest.importorskip("onnxruntime")
    from alfred_edge.models import build_model, save_model
    from alfred_edge.quantize import model_header, read_variant_file
    from alfred_edge.quantize.onnx_variants import save_onnx_variant

    vocab = json.loads((store / "vocab.json").read_text())
    fp32 = tmp_path / name / "fp32.pt"
    model = build_model(name, TINY[name], vocab)
    save_model(model, fp32)
    folder = tmp_path / name / "fp32.onnx"
    save_onnx_variant(model, "fp32", model_header(read_variant_file(fp32)), folder)
    spec = {"host": "t", "model": name, "architecture": name, "workload": "expert", "variant": "fp32",
            "device": "cpu", "backend": "onnxruntime", "provider": "cpu", "batch_size": 3, "features": "mmap",
            "threads": 1, "max_steps": 2, "timeout_s": 120, "model_path": str(folder), "fp32_path": str(fp32),
            "store_dir": str(store / "valid_seen"),
            "loop": {"min_iterations": 2, "min_duration_s": 0.0, "max_duration_s": 60.0, "warmup_iterations": 0},
            "power": {"interval_s": 0.05, "idle_s": 0.0}}
    out = tmp_path / "cell.parquet"
    row = runner.run_cell(spec, out)
    assert row["status"] == "ok", row.get("error")
    assert (row["backend"], row["provider"], row["observed_batch_size"]) == ("onnxruntime", "cpu", 3)
    assert row["step_weight_bytes"] == (folder / "step.onnx").stat().st_size
    assert row["model_file_mb"] == pytest.approx(sum(p.stat().st_size for p in folder.glob("*.onnx")) / 1e6)

