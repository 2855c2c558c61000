"""The onnxruntime backend: both models' exported graphs compute what the eager models do
(within EXPORT_ATOL), their products are laid out as ONNX Runtime's quantizer can quantize
them, the int8 graphs really are int8, and an absent provider or an absent onnxruntime is a
reason, not a crash."""
import subprocess
import sys
import warnings

import pytest
import torch

from alfred_edge import variants
from alfred_edge.backends.onnx_export import export_model
from alfred_edge.backends.onnxruntime_model import OnnxRuntimeModel
from alfred_edge.models.file_format import header
from alfred_edge.models import save_model
from alfred_edge.quantize import read_variant_file
from alfred_edge.quantize.onnx_variants import load_onnx_variant, save_onnx_variant
from alfred_edge.variants import VariantUnavailable
from model_inputs import one_thread, random_batch, tiny_model, tiny_vocab  # noqa: F401

onnx = pytest.importorskip("onnx")
warnings.filterwarnings("ignore", message=r".*(deprecated|TypedStorage).*")

# float32 graphs against eager float32: the same operators in another order (fused LSTM,
# MatMul for Linear), so only rounding differs
EXPORT_ATOL = 1e-4


def source_header(model, folder):
    save_model(model, folder / "fp32.pt")
    return header(read_variant_file(folder / "fp32.pt"))


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = tiny_model(request.param)
    save_onnx_variant(model, "fp32", source_header(model, folder), folder / "fp32.onnx")
    return model, folder


# batches of another size than the export's example (3), the first of one row
SHAPES = {1: ((11,), (7,)), 3: ((11, 6, 9), (7, 4, 6)), 5: ((11, 6, 9, 4, 10), (7, 4, 6, 2, 3))}


@pytest.mark.parametrize("rows", SHAPES)
def test_exported_graphs_equal_eager_outputs(exported, rows):
    model, folder = exported
    ort = load_onnx_variant(folder / "fp32.onnx", "cpu", threads=1)
    batch = random_batch(tiny_vocab(), lang_lengths=SHAPES[rows][0], frame_lengths=SHAPES[rows][1])
    with torch.no_grad():
        eager, graphs = model(batch), ort(batch)
        for key in ("action_logits", "mask_logits"):
            assert eager[key].shape == graphs[key].shape
            torch.testing.assert_close(graphs[key], eager[key], atol=EXPORT_ATOL, rtol=0)
        # step by step, as the benchmark decodes: the state the graphs carry is the eager one's
        states = model.encode(batch["lang"], batch["lang_lengths"]), ort.encode(batch["lang"], batch["lang_lengths"])
        for t in range(3):
            prev = batch["actions"][:, t - 1] if t else None
            (a, m, s_eager), (b, n, s_ort) = (x.step(s, batch["frames"][:, t], prev, with_mask=True)
                                              for x, s in zip((model, ort), states))
            torch.testing.assert_close(b, a, atol=EXPORT_ATOL, rtol=0)
            torch.testing.assert_close(n, m, atol=EXPORT_ATOL, rtol=0)
            states = s_eager, s_ort


def test_products_are_matmuls_with_constant_weights(exported):
    """The exporter's Gemm(x, W^T) is what ONNX Runtime's dynamic quantizer leaves float."""
    _, folder = exported
    for graph in ("encode", "step", "mask"):
        proto = onnx.load(folder / "fp32.onnx" / f"{graph}.onnx")
        ops = {node.op_type for node in proto.graph.node}
        assert "Gemm" not in ops and "Constant" not in ops or graph == "encode", (graph, ops)
        if graph == "step":
            assert "MatMul" in ops


def test_int8_dynamic_graphs_are_int8_and_smaller(exported, tmp_path):
    model, folder = exported
    save_onnx_variant(model, "int8_dynamic", source_header(model, tmp_path), tmp_path / "int8_dynamic.onnx")
    step = onnx.load(tmp_path / "int8_dynamic.onnx" / "step.onnx")
    assert "MatMulInteger" in {node.op_type for node in step.graph.node}
    # the embeddings (Gather) stay float, and weigh much in a tiny model
    assert variants.stored_bytes(tmp_path / "int8_dynamic.onnx") < 0.7 * variants.stored_bytes(folder / "fp32.onnx")
    ort = load_onnx_variant(tmp_path / "int8_dynamic.onnx", "cpu", threads=1)
    with torch.no_grad():
        out = ort(random_batch(tiny_vocab()))
    assert torch.isfinite(out["action_logits"]).all()


def test_sessions_take_the_threads_asked_and_stop_spinning_after_a_run(exported):
    _, folder = exported
    model = load_onnx_variant(folder / "fp32.onnx", "cpu", threads=1)
    for name, session in model.sessions.items():
        options = session.get_session_options()
        assert options.intra_op_num_threads == 1, name
        assert options.get_session_config_entry("session.force_spinning_stop") == "1", name


def test_absent_provider_is_a_reason(exported):
    _, folder = exported
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has TensorRT")
    with pytest.raises(VariantUnavailable, match="has no TensorrtExecutionProvider"):
        load_onnx_variant(folder / "fp32.onnx", "tensorrt")


def test_cell_without_onnxruntime_is_a_skipped_row_saying_why(exported, tmp_path):
    """A board without onnxruntime: its onnxruntime cells are skipped rows naming the package."""
    import pyarrow.parquet as pq

    _, folder = exported
    hide = tmp_path / "hide"
    (hide / "onnxruntime").mkdir(parents=True)
    (hide / "onnxruntime" / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    out = tmp_path / "cell.parquet"
    env = {"PYTHONPATH": f"{hide}:{':'.join(sys.path)}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "alfred_edge.bench", "cell", "--model", "lstm", "--backend", "onnxruntime",
                    "--model-path", str(folder / "fp32.onnx"), "--batch", "1", "--threads", "1", "--out", str(out)],
                   check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["backend"], row["provider"]) == ("skipped", "onnxruntime", "cpu")
    assert "needs the onnxruntime package" in row["error"]


def test_graph_tensor_names_match_the_step_outputs(exported):
    model, folder = exported
    ort = OnnxRuntimeModel(folder / "fp32.onnx", source_header(model, folder), threads=1)
    assert [f"{name}_next" for name in ort.graphs.tensor_names(model.config)[1]] == ort.outputs["step"][2:]
