"""Eager int8_static (alfred_edge.quantize.static_int8): a transposed convolution's sub-pixel
form is the same function; the model with int8 convolutions stays close to float on inputs
like those it was calibrated on; its file loads back to identical outputs; it refuses to
build without its calibration."""
import warnings

import pytest
import torch
from torch.nn import functional as F

from alfred_edge import quantize as Q
from alfred_edge.models import save_model
from alfred_edge.quantize.conversions import CONV_ENGINES, CONVERSIONS
from alfred_edge.quantize.static_int8 import Int8MaskDecoder, Int8VisualEncoder, shuffle_channels_last, subpixel_conv
from model_inputs import one_thread, random_batch, tiny_model, tiny_vocab  # noqa: F401 (fixture)

warnings.filterwarnings("ignore", message=r".*(deprecated|TypedStorage|calculate_qparams).*")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding", [
    (6, 4, 6, 4, 1),  # the mask decoder's folded conv3 / conv2
    (4, 1, 4, 2, 1),  # its dconv1
    (3, 5, 3, 1, 1),
    (2, 3, 8, 4, 2),
])  # fmt: skip
def test_subpixel_form_is_the_transposed_convolution(c_in, c_out, kernel, stride, padding, channels_last):
    torch.manual_seed(0)
    weight, bias = torch.randn(c_in, c_out, kernel, kernel), torch.randn(c_out)
    x = torch.randn(2, c_in, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = shuffle_channels_last(subpixel_conv(weight, bias, stride, padding)(x), stride)
    torch.testing.assert_close(got, F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding),
                               atol=1e-5, rtol=1e-5)


def test_subpixel_form_refuses_a_size_it_does_not_reproduce():
    with pytest.raises(ValueError, match="kernel 3, stride 2, padding 1"):
        subpixel_conv(torch.randn(2, 2, 3, 3), torch.zeros(2), stride=2, padding=1)


def assert_masks_close(masks, reference):
    assert (masks - reference).abs().mean() < 0.01 * (reference.max() - reference.min())
    assert ((masks > 0) == (reference > 0)).float().mean() > 0.99


def calibrated(name):
    model = tiny_model(name)
    calibration = [random_batch(tiny_vocab(), seed=seed) for seed in range(3)]
    return model, CONVERSIONS["int8_static"].build(model, calibration)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_int8_convolutions_stay_close_to_float(name):
    """Every convolution int8; on a batch drawn like the calibration's: the masks' logits
    within 1 % of their range on average and of the same sign almost everywhere, the actions'
    logits as close as int8_dynamic's. (Not the largest error: torch.ao's x86 observer clips
    the rare extremes of a range, where that error lies.)"""
    model, quantized = calibrated(name)
    for kind, convs in ((Int8MaskDecoder, ("conv3", "conv2", "conv1")), (Int8VisualEncoder, ("conv1", "conv2"))):
        (module,) = [m for m in quantized.modules() if isinstance(m, kind)]
        assert all("quantized" in type(getattr(module.convs, c)).__module__ for c in convs)
    batch = random_batch(tiny_vocab(), seed=7)
    with torch.no_grad():
        expected, got = model(batch), quantized(batch)
    masks, reference = got["mask_logits"], expected["mask_logits"]
    assert masks.shape == reference.shape
    assert_masks_close(masks, reference)
    actions = expected["action_logits"]
    assert (got["action_logits"] - actions).abs().max() < 0.25 * actions.abs().max()


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_int8_static_file_loads_back_to_identical_outputs(name, tmp_path):
    model, quantized = calibrated(name)
    save_model(model, tmp_path / "fp32.pt")
    Q.save_variant(quantized, "int8_static", Q.model_header(Q.read_variant_file(tmp_path / "fp32.pt")),
                   tmp_path / "int8_static.pt")
    loaded = Q.load_variant(tmp_path / "int8_static.pt", "cpu")
    batch = random_batch(tiny_vocab(), seed=7)
    with torch.no_grad():
        expected, got = quantized(batch), loaded(batch)
    for key in expected:  # on a CPU where x86's engine packs for fbgemm, also that the load packs its
        assert torch.equal(got[key], expected[key]), key  # convolutions for oneDNN as the build did
    recorded = Q.read_variant_file(tmp_path / "int8_static.pt")["engine"]  # both engines its weights are packed for
    assert torch.backends.quantized.engine in recorded and Q.choose_engine(engines=CONV_ENGINES) in recorded


def test_int8_static_needs_its_calibration():
    with pytest.raises(ValueError, match="needs the train store"):
        Q.make_variant(tiny_model("lstm"), "int8_static")


def test_int8_static_refuses_a_calibration_without_masks():
    batch = random_batch(tiny_vocab())
    batch["valid_interact"] = torch.zeros_like(batch["valid_interact"])
    with pytest.raises(ValueError, match="never ran dec.mask_dec"):
        CONVERSIONS["int8_static"].build(tiny_model("lstm"), [batch])


@pytest.mark.parametrize("step", ["pruned", "lowrank"])
def test_int8_static_builds_on_a_structural_step(step):
    """Composites (pruned+int8_static, lowrank+int8_static): the sub-pixel forms follow the
    pruned decoder's channels, the int8 layers the factorised ones."""
    from alfred_edge.quantize.structure import build_structure
    from test_compression import SETTINGS

    shrunk = build_structure(tiny_model("lstm"), step, {**SETTINGS[step], "finetune": {"steps": 0}})
    calibration = [random_batch(tiny_vocab(), seed=seed) for seed in range(3)]
    quantized = CONVERSIONS["int8_static"].build(shrunk, calibration)
    batch = random_batch(tiny_vocab(), seed=7)
    with torch.no_grad():
        expected, got = shrunk(batch)["mask_logits"], quantized(batch)["mask_logits"]
    assert_masks_close(got, expected)
