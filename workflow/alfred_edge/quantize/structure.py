"""The structural variants (alfred_edge.variants: lowrank, pruned): they change a float
model's layers, so that it really holds fewer weights and does less work, and stay float (a
precision step such as int8_dynamic may follow).

    model = build_structure(float_model, "lowrank", settings)     # a changed copy, eval mode
    model.compression       # [{"step": "lowrank", ...}]: what each step did, saved in the file
    skeleton = apply_structure(model_from_record(header, "meta"), model.compression)   # loading

Each step records only sizes (which layer got which rank, how many units were kept), enough
to rebuild the skeleton the saved weights fit. A short fine-tune on the train store may follow
each (alfred_edge.quantize.finetune), with the settings' `finetune`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from alfred_edge.models.lstm import linear, lstm_cell
from alfred_edge.variants import VariantUnavailable

MASK_PIXELS = 49  # the mask decoder's 7x7 start: its Linear's outputs come in groups of 49 per channel


# --- lowrank -------------------------------------------------------------------------------


class LowRankLinear(nn.Module):
    """nn.Linear(in, out) factorised: Linear(in, rank, no bias), then Linear(rank, out)."""

    def __init__(self, in_features: int, rank: int, out_features: int):
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features)

    def forward(self, x):
        return linear(self.second, linear(self.first, x))


class ProjectedLSTMCell(nn.Module):
    """nn.LSTMCell(in, hidden) with its input weights factorised: a Linear(in, rank, no bias)
    projects the input, an LSTMCell(rank, hidden) takes it."""

    def __init__(self, input_size: int, rank: int, hidden_size: int):
        super().__init__()
        self.project = nn.Linear(input_size, rank, bias=False)
        self.cell = nn.LSTMCell(rank, hidden_size)

    def forward(self, x, state):
        return lstm_cell(self.cell, linear(self.project, x), state)


def lowrank_candidates(model: nn.Module, min_parameters: int) -> dict:
    """{module name: the weight to factorise} for every float nn.Linear (not tied to an
    embedding) and nn.LSTMCell (its input weights) of at least min_parameters weights."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    candidates = {}
    for name, module in model.named_modules():
        if type(module) is nn.Linear and id(module.weight) not in embedding_weights:
            weight = module.weight
        elif type(module) is nn.LSTMCell:
            weight = module.weight_ih
        else:
            continue
        if weight.numel() >= min_parameters:
            candidates[name] = weight
    return candidates


def chosen_rank(singular_values, energy: float | None, rank: int | None) -> int:
    """The configured rank, or the fewest singular values that keep `energy` of the squared sum."""
    if rank is not None:
        return min(rank, len(singular_values))
    kept = torch.cumsum(singular_values.double() ** 2, 0) / (singular_values.double() ** 2).sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=torch.float64))) + 1


@torch.no_grad()
def build_lowrank(model: nn.Module, settings: dict) -> dict:
    """Factorise, in place, each candidate whose chosen rank holds fewer weights than the
    layer (r * (in + out) < in * out). -> the step's record."""
    ranks = {}
    for name, weight in lowrank_candidates(model, settings["min_parameters"]).items():
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        r = chosen_rank(s, settings.get("energy"), settings.get("rank"))
        out_features, in_features = weight.shape
        if r * (in_features + out_features) >= in_features * out_features:
            continue  # no saving: the layer stays as it is
        root = s[:r].sqrt()
        factorised = _factorised(model.get_submodule(name), r)
        first, second = (factorised.project, factorised.cell) if isinstance(factorised, ProjectedLSTMCell) \
            else (factorised.first, factorised.second)
        first.weight.copy_(root[:, None] * vh[:r])
        _copy_second(model.get_submodule(name), second, u[:, :r] * root[None, :])
        _replace(model, name, factorised)
        ranks[name] = r
    return {"step": "lowrank", "layers": ranks}


def _factorised(module: nn.Module, rank: int) -> nn.Module:
    if isinstance(module, nn.LSTMCell):
        return ProjectedLSTMCell(module.input_size, rank, module.hidden_size)
    return LowRankLinear(module.in_features, rank, module.out_features)


def _copy_second(original: nn.Module, second: nn.Module, weight) -> None:
    if isinstance(original, nn.LSTMCell):
        second.weight_ih.copy_(weight)
        for name in ("weight_hh", "bias_ih", "bias_hh"):
            getattr(second, name).copy_(getattr(original, name))
        return
    second.weight.copy_(weight)
    second.bias.copy_(original.bias)


def skeleton_lowrank(model: nn.Module, record: dict) -> None:
    for name, rank in record["layers"].items():
        _replace(model, name, _factorised(model.get_submodule(name), rank))


# --- pruned --------------------------------------------------------------------------------


def _keep(scores, fraction: float):
    """Indices of the top `fraction` of scores (at least one), in their original order."""
    count = max(1, round(fraction * len(scores)))
    return torch.topk(scores, count).indices.sort().values


def _norms(weight, dim: int):
    return weight.float().pow(2).sum(dim).sqrt()


def frame_consumers(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, first input column of the visual features) of every layer reading
    vis_encoder's output: the lstm's cell input is [vis, lang, e], its cont [h, vis, lang, e]."""
    if model.name == "transformer":
        return [("frame_proj", 0)]
    d = 2 * model.config["dhid"]
    heads = ["dec.actor", "dec.mask_dec.d1"] + (["dec.subgoal", "dec.progress"] if model.dec.progress_monitor else [])
    return [("dec.cell", 0)] + [(name, d) for name in heads]


def _vis_encoder(model):
    return model.vis_encoder if model.name == "transformer" else model.dec.vis_encoder


def _mask_decoder(model):
    return model.mask_dec if model.name == "transformer" else model.dec.mask_dec


def _feed_forward_layers(model) -> list[str]:
    if model.name != "transformer":
        return []
    return [f"encoder.layers.{i}" for i in range(len(model.encoder.layers))] + \
           [f"decoder.layers.{i}" for i in range(len(model.decoder.layers))]


@torch.no_grad()
def build_pruned(model: nn.Module, settings: dict) -> dict:
    """Prune, in place, the top-scored `keep` fraction of each group in settings["groups"]
    (frame: visual features; mask: the mask decoder's channels; ffn: the transformer's
    feed-forward units), a unit scored by the norms of its input and output weights.
    -> the step's record (the kept counts)."""
    keep, groups = settings["keep"], settings["groups"]
    record = {"step": "pruned"}
    if "frame" in groups:
        fc = _vis_encoder(model).fc
        out_norms = torch.zeros(fc.out_features)
        for name, start in frame_consumers(model):
            weight = _input_weight(model.get_submodule(name))
            out_norms += _norms(weight[:, start:start + fc.out_features], 0) ** 2
        kept = _keep(_norms(fc.weight, 1) * out_norms.sqrt(), keep)
        _prune_frame(model, kept)
        record["frame"] = len(kept)
    if "mask" in groups:
        decoder = _mask_decoder(model)
        channels = decoder.dconv3.in_channels
        rows = decoder.d1.weight.reshape(channels, MASK_PIXELS, -1)
        kept = _keep(_norms(rows.flatten(1), 1) * _norms(decoder.dconv3.weight.flatten(1), 1), keep)
        _prune_mask(decoder, kept)
        record["mask"] = len(kept)
    if "ffn" in groups:
        record["ffn"] = {}
        for name in _feed_forward_layers(model):
            layer = model.get_submodule(name)
            kept = _keep(_norms(layer.fc1.weight, 1) * _norms(layer.fc2.weight, 0), keep)
            _prune_feed_forward(layer, kept)
            record["ffn"][name] = len(kept)
    return record


def _input_weight(module):
    return module.weight_ih if isinstance(module, nn.LSTMCell) else module.weight


def _prune_frame(model, kept) -> None:
    """Keep the visual features `kept` (indices, or a count for a skeleton)."""
    fc = _vis_encoder(model).fc
    count = kept if isinstance(kept, int) else len(kept)
    _vis_encoder(model).fc = _sliced_linear(fc, rows=kept, count=count)
    for name, start in frame_consumers(model):
        module = model.get_submodule(name)
        columns = _columns_without(_input_weight(module).shape[1], start, fc.out_features, kept)
        _replace(model, name, _sliced_input(module, columns))


def _columns_without(width: int, start: int, span: int, kept):
    """Input columns of a layer after its span [start, start + span) keeps only `kept`
    (indices within the span), or the new width for a skeleton (kept a count)."""
    if isinstance(kept, int):
        return width - span + kept
    return torch.cat([torch.arange(start), start + kept, torch.arange(start + span, width)])


def _prune_mask(decoder, kept) -> None:
    count = kept if isinstance(kept, int) else len(kept)
    rows = count * MASK_PIXELS if isinstance(kept, int) else (kept[:, None] * MASK_PIXELS +
                                                               torch.arange(MASK_PIXELS)[None, :]).flatten()
    decoder.d1 = _sliced_linear(decoder.d1, rows=rows, count=count * MASK_PIXELS)
    old = decoder.dconv3
    new = nn.ConvTranspose2d(count, old.out_channels, old.kernel_size, old.stride, old.padding,
                             device=old.weight.device, dtype=old.weight.dtype)
    if not isinstance(kept, int):
        new.weight.copy_(old.weight[kept])
        new.bias.copy_(old.bias)
    decoder.dconv3 = new
    decoder.fold()


def _prune_feed_forward(layer, kept) -> None:
    count = kept if isinstance(kept, int) else len(kept)
    layer.fc1 = _sliced_linear(layer.fc1, rows=kept, count=count)
    layer.fc2 = _sliced_input(layer.fc2, kept if not isinstance(kept, int) else count)


def _sliced_linear(layer: nn.Linear, rows, count: int) -> nn.Linear:
    """`layer` with only the output rows `rows` (indices; an int: a skeleton of `count` rows)."""
    new = nn.Linear(layer.in_features, count, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    if not isinstance(rows, int):
        new.weight.copy_(layer.weight[rows])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[rows])
    return new


def _sliced_input(module, columns):
    """A Linear or LSTMCell reading only the input columns `columns` (indices; an int: a
    skeleton of that many inputs)."""
    width = columns if isinstance(columns, int) else len(columns)
    weight = _input_weight(module)
    kwargs = dict(device=weight.device, dtype=weight.dtype)
    if isinstance(module, nn.LSTMCell):
        new = nn.LSTMCell(width, module.hidden_size, **kwargs)
        if not isinstance(columns, int):
            new.weight_ih.copy_(module.weight_ih[:, columns])
            for name in ("weight_hh", "bias_ih", "bias_hh"):
                getattr(new, name).copy_(getattr(module, name))
        return new
    new = nn.Linear(width, module.out_features, bias=module.bias is not None, **kwargs)
    if not isinstance(columns, int):
        new.weight.copy_(module.weight[:, columns])
        if module.bias is not None:
            new.bias.copy_(module.bias)
    return new


def skeleton_pruned(model: nn.Module, record: dict) -> None:
    if "frame" in record:
        _prune_frame(model, record["frame"])
    if "mask" in record:
        _prune_mask(_mask_decoder(model), record["mask"])
    for name, count in record.get("ffn", {}).items():
        _prune_feed_forward(model.get_submodule(name), count)


# --- both ----------------------------------------------------------------------------------


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


BUILDERS = {"lowrank": build_lowrank, "pruned": build_pruned}
SKELETONS = {"lowrank": skeleton_lowrank, "pruned": skeleton_pruned}


def build_structure(model: nn.Module, step: str, settings: dict, train_store=None) -> nn.Module:
    """A copy of the float `model` changed by structural `step` (with its settings), then
    fine-tuned on `train_store` when settings["finetune"]["steps"] > 0; in eval mode, its
    record appended to .compression."""
    changed = copy.deepcopy(model).cpu().eval()
    if any(not p.is_floating_point() for p in changed.parameters()):
        raise VariantUnavailable(step, "structural steps apply to a float model")
    record = BUILDERS[step](changed, settings)
    changed.compression = [*getattr(model, "compression", []), record]
    if settings["finetune"]["steps"] > 0:
        from alfred_edge.quantize.finetune import finetune

        finetune(changed, train_store, settings["finetune"])
    return changed.eval()


def apply_structure(model: nn.Module, compression: list) -> nn.Module:
    """The skeleton of a variant's float model: `model` (built from the fp32 header, any
    device, meta included) with each recorded step's layer sizes."""
    for record in compression:
        SKELETONS[record["step"]](model, record)
    model.compression = list(compression)
    return model
