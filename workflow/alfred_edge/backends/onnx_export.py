"""Export an eager model's graphs (alfred_edge.backends.graphs) to ONNX files:

    export_model(model, folder)   # folder/encode.onnx, step.onnx, mask.onnx

with torch.onnx's TorchScript-based exporter, every batch, language and step count left
dynamic. (The torch.export-based exporter, torch's default since 2.9, fixes the language length
of the lstm's encoder: torch.export unrolls an LSTM over its time steps; the TorchScript
exporter writes ONNX's LSTM operator, whose length is an input.) Each product with a weight
is then laid out as MatMul(x, W) (+ Add of the bias): the exporter writes a Linear on a
[B,in] batch as Gemm(x, W, b, transB=1), which ONNX Runtime's dynamic quantizer leaves float;
MatMul with a constant weight is the pattern it quantizes (and that ONNX Runtime runs as
fast); and the tensors the exporter writes as Constant nodes (the mask decoder's folded
convolutions, alfred_edge.models.lstm.MaskDecoder) become initializers, the only weights
ONNX Runtime's quantizers see. The weights are stored in the .onnx files themselves.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from alfred_edge.backends.graphs import STEP_INPUTS, STEP_OUTPUTS, model_graphs, step_example

GRAPH_NAMES = ("encode", "step", "mask")
OPSET = 17
# Example sizes for tracing (the graphs are the same for any): above 1, so that no size-1
# broadcast is recorded.
EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_STEPS = 3, 5, 2


def graph_io(graphs) -> dict:
    """Per graph: (input names, output names)."""
    state_next = tuple(f"{name}_next" for name in graphs.state)
    first_state = graphs.empty_state(graphs.model.config, 1)
    return {
        "encode": (("lang", "lang_lengths"), tuple(n for n in (*graphs.context, *graphs.state) if n not in first_state)),
        "step": ((*graphs.context, *graphs.state, *STEP_INPUTS), (*STEP_OUTPUTS, *state_next)),
        "mask": (("cont",), ("mask_logits",)),
    }


def export_model(model, folder: str | Path) -> dict:
    """Write folder/{encode,step,mask}.onnx for the eager float `model` (put in eval mode).
    Returns graph_io's names."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graphs = model_graphs(model)
    names = graph_io(graphs)
    examples = _examples(graphs)
    axes = {**graphs.dynamic_axes(), "lang": {0: "batch", 1: "length"}, "lang_lengths": {0: "batch"},
            "frames": {0: "batch"}, "prev_action": {0: "batch"}, "cont": {0: "rows"}, "mask_logits": {0: "rows"},
            "action_logits": {0: "batch"}}  # fmt: skip
    axes.update({f"{name}_next": {**axes[name], **({2: "next_steps"} if 2 in axes[name] else {})}
                 for name in graphs.state})  # fmt: skip
    for name in GRAPH_NAMES:
        inputs, outputs = names[name]
        proto = _export(getattr(graphs, name), examples[name], inputs, outputs, axes)
        onnx.save(weights_as_matmul(constants_as_initializers(proto)), folder / f"{name}.onnx")
    return names


def _examples(graphs) -> dict:
    lang = torch.randint(3, graphs.model.vocab_sizes["word"], (EXAMPLE_BATCH, EXAMPLE_LENGTH))
    lengths = torch.tensor([EXAMPLE_LENGTH] + [EXAMPLE_LENGTH - 1] * (EXAMPLE_BATCH - 1))
    step = step_example(graphs, EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_STEPS)
    with torch.no_grad():
        cont = graphs.step(*step.values())[1]
    return {"encode": {"lang": lang, "lang_lengths": lengths}, "step": step, "mask": {"cont": cont}}


def _export(module, example: dict, inputs, outputs, axes: dict):
    import onnx

    buffer = io.BytesIO()
    used = set(inputs) | set(outputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's: see the module's docstring
        # the tracer's notes on shapes read as Python values: the graphs' shapes follow their
        # inputs' (dynamic_axes), which the equivalence tests check at several lengths
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the encoder's LSTM starts from zero states, which ONNX's LSTM takes for any batch
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(module, tuple(example[n] for n in inputs), buffer, dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs), do_constant_folding=True,
                          dynamic_axes={n: a for n, a in axes.items() if n in used})
    return onnx.load_from_string(buffer.getvalue())


def constants_as_initializers(proto):
    """Every Constant node holding a tensor turned into an initializer of the same name."""
    from onnx import helper

    graph = proto.graph
    nodes = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            tensor = helper.get_attribute_value(attrs["value"])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def weights_as_matmul(proto):
    """Every Gemm(x, W, b) whose W and b are constants (alpha = beta = 1, x not transposed)
    rewritten as MatMul(x, W') + b, W' being W laid out [in,out]."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "Gemm" or not _constant_plain_gemm(node, initializers):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(initializers[node.input[1]])
        weight_name = f"{node.input[1]}.in_out"
        graph.initializer.append(numpy_helper.from_array(weight.T.copy() if attrs.get("transB", 0) else weight,
                                                         weight_name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}.product" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=f"{node.name}.MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}.Add"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def _constant_plain_gemm(node, initializers) -> bool:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    has_bias = len(node.input) > 2 and node.input[2]
    constant = node.input[1] in initializers and (not has_bias or node.input[2] in initializers)
    return constant and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and (
        not has_bias or attrs.get("beta", 1.0) == 1.0)
