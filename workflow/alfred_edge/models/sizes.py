"""Parameter counts of the two models in pure Python (no torch import), so that the dry run
and the storage plan can size `models/{model}/*.pt` at parse time.

`parameter_count(name, model_config, vocab_sizes)` equals `sum(p.numel() for p in
build_model(...).parameters())` with tied weights counted once; tests/test_models_sizes.py
checks that for both models."""
from __future__ import annotations

from typing import Mapping

from alfred_edge.data.dataset import FRAME_SHAPE

# Architecture defaults, shared with the model code (which imports them from here, so the
# count and the model can never disagree on a default).
LSTM_DEFAULTS = {
    "demb": 100,
    "dhid": 512,
    "dframe": 2500,
    "pframe": 300,
    "progress_monitor": False,
    "teacher_forcing": True,
    "vis_dropout": 0.3,
    "hstate_dropout": 0.3,
    "lang_dropout": 0.0,
    "input_dropout": 0.0,
    "attn_dropout": 0.0,
    "actor_dropout": 0.0,
}
TRANSFORMER_DEFAULTS = {
    "d_model": 128,
    "heads": 4,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "ffn": 256,
    "dframe": 256,
    "pframe": 300,
    "max_positions": 512,
    "dropout": 0.1,
    "kv_cache": True,
}
DEFAULTS = {"lstm": LSTM_DEFAULTS, "transformer": TRANSFORMER_DEFAULTS}

RESNET_CHANNELS = FRAME_SHAPE[0]
VIS_CHANNELS = (256, 64)  # 1x1 convs of ALFRED's ResnetVisualEncoder
FLAT = VIS_CHANNELS[-1] * FRAME_SHAPE[1] * FRAME_SHAPE[2]  # 3136


def architecture_name(name: str, model_config: Mapping) -> str:
    """The architecture of the config's model entry `name`: its `architecture` key, else the
    name itself (the entries `lstm` and `transformer`)."""
    return model_config.get("architecture", name)


def architecture(name: str, model_config: Mapping) -> dict:
    """The model's architecture settings: defaults overridden by the config (other keys such
    as `train` and `init_from` are not architecture and are left out)."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(DEFAULTS)}")
    defaults = DEFAULTS[name]
    return {key: model_config.get(key, default) for key, default in defaults.items()}


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _vis_encoder(dframe: int) -> int:
    c1, c2 = VIS_CHANNELS
    convs = _linear(RESNET_CHANNELS, c1) + _linear(c1, c2)  # 1x1 convs
    batchnorms = 2 * (c1 + c2)
    return convs + batchnorms + _linear(FLAT, dframe)


def _mask_decoder(d_in: int) -> int:
    d1 = _linear(d_in, FLAT)
    deconvs = (64 * 32 * 16 + 32) + (32 * 16 * 16 + 16) + (16 * 1 * 16 + 1)  # k4 ConvTranspose2d
    batchnorms = 2 * (32 + 16)
    return d1 + deconvs + batchnorms


def _lstm(a: dict, n_words: int, n_actions: int) -> int:
    demb, dhid, dframe = a["demb"], a["dhid"], a["dframe"]
    dec_hid = 2 * dhid  # the decoder's hidden size: both encoder directions
    inp = dframe + dec_hid + demb  # [vis, weighted lang, prev action]
    cont = dec_hid + inp  # [h_t, inp_t]
    count = n_words * demb + n_actions * demb  # emb_word, emb_action_low (= dec.emb)
    count += 2 * (4 * dhid * (demb + dhid) + 2 * 4 * dhid)  # bidirectional enc
    count += _linear(dec_hid, 1)  # enc_att.scorer
    count += _vis_encoder(dframe)
    count += 4 * dec_hid * (inp + dec_hid) + 2 * 4 * dec_hid  # dec.cell
    count += demb  # dec.go
    count += _linear(cont, demb)  # dec.actor
    count += _mask_decoder(cont)
    count += _linear(dec_hid, dec_hid)  # dec.h_tm1_fc
    if a["progress_monitor"]:
        count += 2 * _linear(cont, 1)  # dec.subgoal, dec.progress
    return count


def _transformer(a: dict, n_words: int, n_actions: int) -> int:
    d, ffn, positions = a["d_model"], a["ffn"], a["max_positions"] + 2  # BART offsets positions by 2
    attention = 4 * _linear(d, d)
    layernorm = 2 * d
    feed_forward = _linear(d, ffn) + _linear(ffn, d)
    encoder_layer = attention + layernorm + feed_forward + layernorm
    decoder_layer = attention + layernorm + attention + layernorm + feed_forward + layernorm
    count = n_words * d + positions * d + layernorm + a["encoder_layers"] * encoder_layer
    count += n_actions * d + positions * d + layernorm + a["decoder_layers"] * decoder_layer
    count += _vis_encoder(a["dframe"]) + _linear(a["dframe"], d)  # frame_proj
    count += d  # go
    count += _linear(2 * d, d)  # actor
    count += _mask_decoder(2 * d)
    return count


def parameter_count(name: str, model_config: Mapping, vocab_sizes: Mapping[str, int]) -> int:
    """Number of parameters of model `name` built with `model_config` for a vocabulary with
    `vocab_sizes["word"]` words and `vocab_sizes["action_low"]` low-level actions."""
    a = architecture(name, model_config)
    n_words, n_actions = int(vocab_sizes["word"]), int(vocab_sizes["action_low"])
    return (_lstm if name == "lstm" else _transformer)(a, n_words, n_actions)


def fp32_file_bytes(name: str, model_config: Mapping, vocab_sizes: Mapping[str, int]) -> int:
    """Approximate size of models/{name}/fp32.pt: 4 bytes a parameter plus BatchNorm
    statistics and a little metadata."""
    return 4 * parameter_count(name, model_config, vocab_sizes) + 64 * 1024
