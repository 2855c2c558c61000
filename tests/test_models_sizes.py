"""Parameter counts: ALFRED's 45.9 M, and the pure-Python count (used at parse time) equal
to the built models for both architectures."""
import subprocess
import sys

import pytest
import torch

from alfred_edge.models import build_model
from alfred_edge.models.sizes import parameter_count

ALFRED_VOCAB = {"word": 2360, "action_low": 15}


def unique_parameters(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once


def vocab_of(sizes):
    return {kind: [f"{kind}{i}" for i in range(n)] for kind, n in sizes.items()}


def test_lstm_at_alfred_sizes_has_45_9_million_parameters():
    with torch.device("meta"):  # no memory, no forward pass
        model = build_model("lstm", {"demb": 100, "dhid": 512, "dframe": 2500}, vocab_of(ALFRED_VOCAB))
    n = unique_parameters(model)
    assert abs(n - 45.9e6) / 45.9e6 < 0.01, n
    assert parameter_count("lstm", {}, ALFRED_VOCAB) == n  # ALFRED's sizes are the defaults
    keys = model.state_dict().keys()
    for key in ("emb_word.weight", "enc.weight_ih_l0_reverse", "enc_att.scorer.weight", "dec.emb.weight",
                "dec.vis_encoder.fc.weight", "dec.cell.weight_ih", "dec.actor.weight",
                "dec.mask_dec.dconv1.weight", "dec.h_tm1_fc.weight", "dec.go"):
        assert key in keys, key  # ALFRED's state_dict names


@pytest.mark.parametrize(
    "name, config",
    [
        ("lstm", {"demb": 16, "dhid": 24, "dframe": 40}),
        ("lstm", {"demb": 16, "dhid": 24, "dframe": 40, "progress_monitor": True}),
        ("transformer", {}),
        ("transformer", {"d_model": 64, "heads": 2, "encoder_layers": 1, "decoder_layers": 3, "ffn": 96,
                         "dframe": 48, "max_positions": 300}),
    ],
)
def test_parse_time_count_equals_the_built_model(name, config):
    sizes = {"word": 75, "action_low": 14}
    with torch.device("meta"):
        model = build_model(name, config, vocab_of(sizes))
    assert parameter_count(name, config, sizes) == unique_parameters(model)


def test_sizes_module_does_not_import_torch():
    code = ("import sys; from alfred_edge.models.sizes import parameter_count; "
            "import alfred_edge.models; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_transformers_is_imported_only_for_the_transformer():
    code = ("import sys; from alfred_edge.models import build_model; "
            "build_model('lstm', {'demb': 8, 'dhid': 8, 'dframe': 8}, {'word': ['a'], 'action_low': ['b']}); "
            "assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
