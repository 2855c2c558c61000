"""Compression variants: every variant survives save -> load with identical outputs, the
tied action head still works after int8, file sizes at ALFRED's sizes, and a clear
message for each way a variant can be unavailable."""
import dataclasses
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from alfred_edge import quantize as Q
from alfred_edge import variants
from alfred_edge.models.file_format import VARIANT_FORMAT
from alfred_edge.quantize import conversions
from alfred_edge.models import build_model, save_model
from model_inputs import random_batch, tiny_vocab

warnings.filterwarnings("ignore", message=r".*(deprecated|TypedStorage).*")

TINY = {
    "lstm": {"demb": 8, "dhid": 16, "dframe": 32, "pframe": 20},
    "transformer": {"d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ffn": 32,
                    "dframe": 32, "pframe": 20},
}  # fmt: skip
VARIANTS = ["fp32", "int8_dynamic", "fp16", "bf16"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(name):
    return build_model(name, TINY[name], tiny_vocab()).eval()


def write_variant(model, variant, folder):
    """The files the quantize job writes: fp32.pt (training's) and <variant>.pt."""
    save_model(model, folder / "fp32.pt")
    if variant == "fp32":
        return model, folder / "fp32.pt"
    converted = Q.make_variant(model, variant)
    header = Q.model_header(Q.read_variant_file(folder / "fp32.pt"))
    Q.save_variant(converted, variant, header, folder / f"{variant}.pt")
    return converted, folder / f"{variant}.pt"


def outputs(model, batch):
    """Whole-sequence outputs and two decoding steps (the benchmark's path)."""
    with torch.no_grad():
        out = model(batch)
        state = model.encode(batch["lang"], batch["lang_lengths"])
        step0 = model.step(state, batch["frames"][:, 0])
        step1 = model.step(step0[2], batch["frames"][:, 1], batch["actions"][:, 0])
    return [out["action_logits"], out["mask_logits"], *step0[:2], *step1[:2]]


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_gives_identical_outputs(name, variant, tmp_path):
    in_memory, path = write_variant(tiny_model(name), variant, tmp_path)
    loaded = Q.load_variant(path, "cpu")
    batch = random_batch(tiny_vocab())
    for expected, got in zip(outputs(in_memory, batch), outputs(loaded, batch)):
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("variant,tolerance", [("int8_dynamic", 0.25), ("fp16", 0.01), ("bf16", 0.05)])
def test_variant_stays_close_to_fp32(name, variant, tolerance):
    """Action logits within `tolerance` of the largest fp32 logit (random weights drift
    more than trained ones; accuracy on trained models is the quantize job's table)."""
    model = tiny_model(name)
    batch = random_batch(tiny_vocab())
    reference = outputs(model, batch)[0]
    converted = outputs(Q.make_variant(model, variant), batch)[0]
    assert (converted.float() - reference).abs().max() < tolerance * reference.abs().max()
    assert not any(p.dtype != torch.float32 for p in model.parameters())  # the fp32 model is untouched


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_tied_action_head_works_after_int8(name):
    """The action logits are actor(cont) @ emb_action_low.weight.T (ALFRED's tie). After
    int8 the embedding is still one float module under both names, and the head reads it:
    at step 0 (input: the learned `go`, no embedding lookup) scaling the embedding scales
    the logits by the same factor."""
    quantized = Q.make_variant(tiny_model(name), "int8_dynamic")
    tied = quantized.dec.emb if name == "lstm" else quantized.decoder.embed_tokens
    assert tied is quantized.emb_action_low
    assert isinstance(tied, nn.Embedding) and tied.weight.dtype == torch.float32
    recurrent = quantized.dec.cell if name == "lstm" else quantized.actor
    assert "quantized" in type(recurrent).__module__  # the rest did get quantized

    batch = random_batch(tiny_vocab())
    with torch.no_grad():
        state = quantized.encode(batch["lang"], batch["lang_lengths"])
        logits = quantized.step(state, batch["frames"][:, 0])[0]
        tied.weight.mul_(2.0)
        state = quantized.encode(batch["lang"], batch["lang_lengths"])
        doubled = quantized.step(state, batch["frames"][:, 0])[0]
    torch.testing.assert_close(doubled, 2 * logits)


def test_linear_tied_to_embedding_stays_float():
    """A head written as nn.Linear sharing the embedding's weight (Hugging Face style) is
    left float, so the tie is not cut; untied Linear/LSTM/LSTMCell are quantized."""

    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.rnn = nn.LSTM(8, 8, batch_first=True)
            self.cell = nn.LSTMCell(8, 8)
            self.proj = nn.Linear(8, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

    model = TiedLM()
    assert conversions.int8_targets(model) == {"rnn", "cell", "proj"}
    quantized = Q.make_variant(model, "int8_dynamic")
    assert quantized.head.weight is quantized.emb.weight
    assert "quantized" in type(quantized.proj).__module__


def test_file_sizes_at_alfred_sizes(tmp_path):
    """ALFRED-size lstm (45.9 M parameters, a 2,360-word vocabulary; random weights give the
    same ratios as trained ones): int8 <= 0.30x and fp16 <= 0.51x the fp32 file."""
    vocab = tiny_vocab()
    vocab["word"] = vocab["word"] + [f"x{i}" for i in range(2360 - len(vocab["word"]))]
    model = build_model("lstm", {}, vocab).eval()
    sizes = {}
    for variant in ("int8_dynamic", "fp16"):
        path = write_variant(model, variant, tmp_path)[1]
        sizes[variant] = path.stat().st_size
    fp32 = (tmp_path / "fp32.pt").stat().st_size
    assert sizes["int8_dynamic"] <= 0.30 * fp32
    assert sizes["fp16"] <= 0.51 * fp32


# --- failure messages --------------------------------------------------------------------


def test_engine_is_chosen_per_cpu_family():
    every = ["qnnpack", "onednn", "x86", "fbgemm"]
    assert Q.choose_engine("x86_64", every) == "x86"
    assert Q.choose_engine("x86_64", ["qnnpack", "fbgemm"]) == "fbgemm"
    assert Q.choose_engine("aarch64", every) == "qnnpack"  # never x86 on ARM (torch 2.11 bug)


def test_static_convolutions_prefer_onednn_on_x86():
    every = ["qnnpack", "onednn", "x86", "fbgemm"]
    assert Q.choose_engine("x86_64", every, conversions.CONV_ENGINES) == "onednn"
    assert Q.choose_engine("x86_64", ["x86", "fbgemm"], conversions.CONV_ENGINES) == "x86"
    assert Q.choose_engine("aarch64", every, conversions.CONV_ENGINES) == "qnnpack"


def test_missing_engine_names_what_is_supported():
    with pytest.raises(Q.VariantUnavailable, match=r"'arm'.*\['x86', 'fbgemm'\].*qnnpack"):
        Q.choose_engine("aarch64", ["x86", "fbgemm"])


def test_torch_without_quantize_dynamic_names_the_version_needed(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.ao.quantization", None)  # import now fails
    with pytest.raises(Q.VariantUnavailable, match=r"no torch\.ao\.quantization\.quantize_dynamic.*torch 2\.4 to 2\.15"):
        Q.make_variant(tiny_model("lstm"), "int8_dynamic")


def test_int8_on_cuda_says_cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Q.VariantUnavailable, match="CPU only, not on cuda"):
        Q.check_available("int8_dynamic", "cuda")


def test_cuda_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Q.VariantUnavailable, match="CUDA is not available"):
        Q.check_available("fp16", "cuda")


def test_bf16_is_refused_below_compute_capability_8_where_it_is_only_emulated(monkeypatch):
    """A Xavier (7.2): is_bf16_supported() says yes (emulation), the variant is refused; an
    Orin (8.7) goes on to the probe that runs the real ops."""
    probed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Xavier")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 2))
    monkeypatch.setattr(conversions, "probe_low_precision", lambda variant, device: probed.append((variant, device.type)))
    with pytest.raises(Q.VariantUnavailable, match=r"Xavier \(compute capability 7\.2\) has no bfloat16 arithmetic"):
        Q.check_available("bf16", "cuda")
    assert probed == []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 7))
    Q.check_available("bf16", "cuda")
    assert probed == [("bf16", "cuda")]


def test_missing_half_kernels_are_reported(monkeypatch):
    def no_half(*args, **kwargs):
        raise NotImplementedError("'upsample_bilinear2d' not implemented for 'Half'")

    monkeypatch.setattr(nn.functional, "interpolate", no_half)
    with pytest.raises(Q.VariantUnavailable, match="float16 kernels missing on cpu.*not implemented for 'Half'"):
        Q.make_variant(tiny_model("lstm"), "fp16")


def test_unknown_variant():
    with pytest.raises(Q.VariantUnavailable, match=r"not a variant: 'int4' not in the registry \(known: fp32, int8"):
        Q.make_variant(tiny_model("lstm"), "int4")


def test_file_of_an_unavailable_variant_raises_its_reason(tmp_path):
    path = tmp_path / "fp16.pt"
    Q.save_unavailable("fp16", "no half kernels here", {"model": "lstm"}, path)
    with pytest.raises(Q.VariantUnavailable, match="'fp16' is unavailable: no half kernels here") as caught:
        Q.load_variant(path, "cpu")
    assert caught.value.reason == "no half kernels here"


def test_a_name_without_a_conversion_gets_a_file_with_its_reason(tmp_path):
    """What the quantize job writes for a variant name nobody implemented: a file that says so."""
    path = tmp_path / "int4.pt"
    with pytest.raises(Q.VariantUnavailable) as unknown:
        Q.make_variant(tiny_model("lstm"), "int4")
    Q.save_unavailable("int4", unknown.value.reason, {"model": "lstm"}, path)
    assert Q.read_variant_file(path)["engine"] is None
    with pytest.raises(Q.VariantUnavailable, match="'int4' is unavailable: not a variant: 'int4' not in the registry"):
        Q.load_variant(path, "cpu")


def test_file_from_another_torch_that_does_not_load(tmp_path):
    model, path = write_variant(tiny_model("lstm"), "int8_dynamic", tmp_path)
    payload = Q.read_variant_file(path)
    payload["torch_version"] = "2.99.0"
    payload["state_dict"].pop("dec.cell._packed_weight_ih")  # a packing this torch cannot read
    other = tmp_path / "other.pt"  # (not over `path`: its tensors are memory-mapped)
    torch.save(payload, other)
    with pytest.raises(Q.VariantUnavailable, match=r"written by torch 2\.99\.0 .* rerun its quantize job"):
        Q.load_variant(other, "cpu")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"PK\x03\x04 truncated", "not a readable alfred-edge variant file"),
        ({"format": "something-else"}, "format 'something-else'"),
        ([1, 2, 3], "format 'list'"),
    ],
)
def test_foreign_files(tmp_path, content, message):
    path = tmp_path / "int8_dynamic.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        Q.load_variant(path, "cpu")


class Payload:
    """Unpickling this would construct an arbitrary class: weights_only must refuse it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "int8_dynamic.pt"
    torch.save({"format": VARIANT_FORMAT, "variant": "int8_dynamic", "evil": Payload()}, path)
    with pytest.raises(ValueError, match="Unsupported global"):
        Q.load_variant(path, "cpu")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fp16.pt does not exist"):
        Q.load_variant(tmp_path / "fp16.pt", "cpu")


def test_every_variant_of_the_registry_has_its_conversion_and_the_registry_needs_no_torch():
    """alfred_edge.variants is the one list of variant names (the storage plan, the report and
    the workflow's parse read it without torch); each precision step the eager backend runs
    has its conversion, each structural step its builder and skeleton."""
    from alfred_edge.quantize import structure

    kinds = {kind: {n for n, v in variants.VARIANTS.items() if v.kind == kind}
             for kind in (variants.PRECISION, variants.STRUCTURE)}  # fmt: skip
    eager = {n for n in kinds[variants.PRECISION] if "eager" in variants.VARIANTS[n].backends}
    assert set(conversions.CONVERSIONS) == eager >= set(VARIANTS)
    assert set(structure.BUILDERS) == set(structure.SKELETONS) == kinds[variants.STRUCTURE]
    code = ("import sys; import alfred_edge.variants, alfred_edge.data.plan, alfred_edge.report.discover; "
            "print(sorted(m for m in ('torch', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_variant_runs_on_the_devices_the_registry_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(variants, "VARIANTS", {**variants.VARIANTS, "fp16": dataclasses.replace(
        variants.VARIANTS["fp16"], devices=("cpu",))})
    with pytest.raises(Q.VariantUnavailable, match=r"CPU only, not on cuda \(variants that run there: fp32, bf16, pruned, lowrank\)"):
        Q.check_available("fp16", "cuda")


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_int8_of_torch_transformer_layers_runs_in_eval():
    """nn.TransformerEncoderLayer's fast path (and nn.TransformerEncoder's, with a padding
    mask) reads linear1.weight as a tensor; int8 keeps the quantized layers off it, so they
    run under no_grad in eval mode, and torch's global fast-path switch stays on for the rest."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    x = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    try:
        quantized = Q.make_variant(layer, "int8_dynamic")
        quantized_encoder = Q.make_variant(encoder, "int8_dynamic")
        assert torch.backends.mha.get_fastpath_enabled()
        with torch.no_grad():
            assert (quantized(x) - layer(x)).abs().max() < 0.25
            encoded = quantized_encoder(x, src_key_padding_mask=padding)
            assert (encoded - encoder(x, src_key_padding_mask=padding))[~padding].abs().max() < 0.25
    finally:
        torch.backends.mha.set_fastpath_enabled(True)  # the default, for the tests that follow


def test_variant_files_load_on_a_torch_without_safe_globals(tmp_path, monkeypatch):
    """torch 2.4 (JetPack 6.0's wheel) has add_safe_globals but no safe_globals context: the
    packed int8 LSTM still loads, and the process-wide allow list is as it was afterwards."""
    from alfred_edge import torch_compat

    model, path = write_variant(tiny_model("lstm"), "int8_dynamic", tmp_path)
    monkeypatch.delattr(torch.serialization, "safe_globals")
    allowed = torch.serialization.get_safe_globals  # a set or a list, as the torch release keeps it
    before = set(allowed())
    loaded = Q.load_variant(path, "cpu")
    batch = random_batch(tiny_vocab())
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, batch), outputs(loaded, batch)))
    assert before <= set(allowed()) and (torch.ScriptObject in allowed()) == (torch.ScriptObject in before)
    with pytest.raises(RuntimeError, match="inside"), torch_compat.safe_globals([Payload]):
        assert Payload in allowed()
        raise RuntimeError("inside")
    assert Payload not in allowed() and before <= set(allowed())
