"""A model's inference interface as three graphs of tensors only, which the ONNX exporter can
trace (alfred_edge.backends.onnx_export) and ONNX Runtime can run (onnxruntime_model):

    encode  lang [B,L] int64, lang_lengths [B] int64 -> the episode's context and first state
    step    context, state, frames [B,512,7,7], prev_action [B] int64, first (bool) ->
            action_logits [B,V], cont [B,C] (the mask decoder's input), the next state
    mask    cont [N,C] -> mask_logits [N,1,P,P]

`first` selects the learned `go` input of step 0 instead of prev_action's embedding. The
caller keeps the state between steps and cuts the language to its longest row (the graphs'
shapes cannot depend on the lengths' values; the eager encoder cuts it so itself). Each graph
runs the eager model's own modules, so the two compute the same function.

A model's graphs (GRAPHS[model.name]) name their context and state tensors; the state's
next values are the step's outputs named "<state>_next".
"""
from __future__ import annotations

import torch
from torch import nn

from alfred_edge.data.dataset import FRAME_SHAPE

STEP_INPUTS = ("frames", "prev_action", "first")
STEP_OUTPUTS = ("action_logits", "cont")


class ModelGraphs:
    """A model's three graphs (its subclass names the encode and step modules and the tensors)."""

    Encode: type[nn.Module]
    Step: type[nn.Module]

    def __init__(self, model):
        self.model = model
        self.context, self.state = self.tensor_names(model.config)
        self.encode = self.Encode(model)
        self.step = self.Step(model)
        self.mask = MaskGraph(model.get_submodule(model.MASK_DECODER))


class MaskGraph(nn.Module):
    def __init__(self, mask_decoder: nn.Module):
        super().__init__()
        self.mask_decoder = mask_decoder

    def forward(self, cont):
        return self.mask_decoder(cont)


def previous_embedding(go, embedding, prev_action, first):
    """[B,demb]: `go` where `first`, else the embedding of prev_action."""
    return torch.where(first, go.unsqueeze(0).expand(prev_action.shape[0], -1), embedding(prev_action))


# --- lstm ----------------------------------------------------------------------------------


class LstmEncode(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, lang, lang_lengths):
        m = self.model
        enc = m.encode_language(m.emb_word(lang), lang_lengths, longest=lang.shape[1])  # [B,L,D]
        h = m.enc_att(enc)
        return enc, h, torch.zeros_like(h)


class LstmStep(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, enc, h, c, frames, prev_action, first):
        dec = self.model.dec
        e_t = previous_embedding(dec.go, self.model.emb_action_low, prev_action, first)
        cont_t, action_t, (h, c) = dec.step(enc, dec.vis_encoder(frames), e_t, (h, c))
        return action_t, cont_t, h, c


class LstmGraphs(ModelGraphs):
    Encode, Step = LstmEncode, LstmStep

    @staticmethod
    def tensor_names(config: dict) -> tuple[tuple, tuple]:
        """(context, state): the names of the tensors encode gives and step reads."""
        return ("enc",), ("h", "c")

    @staticmethod
    def empty_state(config: dict, batch: int) -> dict:
        """State tensors the encode graph does not give: their values before step 0."""
        return {}

    def example(self, batch: int, length: int, steps: int) -> dict:
        """Example tensors of the context and state, for tracing."""
        d = 2 * self.model.config["dhid"]
        return {"enc": torch.randn(batch, length, d), "h": torch.randn(batch, d), "c": torch.randn(batch, d)}

    @staticmethod
    def dynamic_axes() -> dict:
        return {"enc": {0: "batch", 1: "length"}, "h": {0: "batch"}, "c": {0: "batch"}}


# --- transformer ---------------------------------------------------------------------------


def split_heads(x, head_dim: int):
    """[B,L,d] -> [B,heads,L,head_dim], as BartAttention lays out its keys and values."""
    return x.view(*x.shape[:2], -1, head_dim).transpose(1, 2)


class TransformerEncode(nn.Module):
    """The encoder's memory, its mask and each decoder layer's cross-attention keys and
    values (which the eager decoder computes at step 0 and caches)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, lang, lang_lengths):
        positions = torch.arange(lang.shape[1], device=lang.device)[None, :]
        memory_mask = (positions < lang_lengths[:, None]).long()
        memory = self.model.encoder(input_ids=lang, attention_mask=memory_mask).last_hidden_state  # [B,L,d]
        keys, values = [], []
        for layer in self.model.decoder.layers:
            attention = layer.encoder_attn
            keys.append(split_heads(attention.k_proj(memory), attention.head_dim))
            values.append(split_heads(attention.v_proj(memory), attention.head_dim))
        return (memory, memory_mask, *keys, *values)


class TransformerStep(nn.Module):
    """One decoder step with the key/value cache given as tensors: the decoder runs on an
    EncoderDecoderCache filled with them, as the eager model's cache holds them."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config["decoder_layers"]

    def forward(self, memory, memory_mask, *tensors):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        n = self.layers
        cross_keys, cross_values, self_keys, self_values = (tensors[i * n:(i + 1) * n] for i in range(4))
        frames, prev_action, first = tensors[4 * n:]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        for i in range(n):
            cache.self_attention_cache.update(self_keys[i], self_values[i], i)
            cache.cross_attention_cache.update(cross_keys[i], cross_values[i], i)
            cache.is_updated[i] = True
        m = self.model
        x_t = m.frame_proj(m.vis_encoder(frames)) + previous_embedding(m.go, m.emb_action_low, prev_action, first)
        h_t = m._decode(x_t.unsqueeze(1), {"memory": memory, "memory_mask": memory_mask}, cache=cache)[:, -1]
        cont_t = torch.cat([h_t, x_t], 1)
        layers = cache.self_attention_cache.layers
        return (m._action_logits(cont_t), cont_t, *(layer.keys for layer in layers), *(layer.values for layer in layers))


class TransformerGraphs(ModelGraphs):
    Encode, Step = TransformerEncode, TransformerStep

    @staticmethod
    def tensor_names(config: dict) -> tuple[tuple, tuple]:
        layers = range(config["decoder_layers"])
        cross = tuple(f"cross_{kind}_{i}" for kind in ("key", "value") for i in layers)
        return ("memory", "memory_mask", *cross), tuple(f"self_{kind}_{i}" for kind in ("key", "value") for i in layers)

    @staticmethod
    def head_shape(config: dict) -> tuple[int, int]:
        return config["heads"], config["d_model"] // config["heads"]

    @staticmethod
    def empty_state(config: dict, batch: int) -> dict:
        """The key/value cache before step 0: no step yet."""
        heads, head_dim = TransformerGraphs.head_shape(config)
        return {name: torch.zeros(batch, heads, 0, head_dim) for name in TransformerGraphs.tensor_names(config)[1]}

    def example(self, batch: int, length: int, steps: int) -> dict:
        config = self.model.config
        heads, head_dim = self.head_shape(config)
        tensors = {"memory": torch.randn(batch, length, config["d_model"]),
                   "memory_mask": torch.ones(batch, length, dtype=torch.long)}  # fmt: skip
        tensors.update({name: torch.randn(batch, heads, length, head_dim) for name in self.context[2:]})
        tensors.update({name: torch.randn(batch, heads, steps, head_dim) for name in self.state})
        return tensors

    def dynamic_axes(self) -> dict:
        axes = {"memory": {0: "batch", 1: "length"}, "memory_mask": {0: "batch", 1: "length"}}
        axes.update({name: {0: "batch", 2: "length"} for name in self.context[2:]})
        axes.update({name: {0: "batch", 2: "steps"} for name in self.state})
        return axes


GRAPHS = {"lstm": LstmGraphs, "transformer": TransformerGraphs}


def model_graphs(model):
    """The graphs of an eager model, all in eval mode (the exporter leaves each graph's module
    in the mode it found it in, and each holds the whole model)."""
    graphs = GRAPHS[model.name](model.eval())
    for module in (graphs.encode, graphs.step, graphs.mask):
        module.eval()
    return graphs


def step_example(graphs, batch: int, length: int, steps: int) -> dict:
    """Example inputs of the step graph, by name, in its input order."""
    tensors = graphs.example(batch, length, steps)
    inputs = {name: tensors[name] for name in (*graphs.context, *graphs.state)}
    inputs["frames"] = torch.rand(batch, *FRAME_SHAPE)
    inputs["prev_action"] = torch.zeros(batch, dtype=torch.long)
    inputs["first"] = torch.tensor(False)
    return inputs
