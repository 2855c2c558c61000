"""`lstm`: ALFRED's seq2seq_im_mask (askforalfred/alfred, models/model/seq2seq_im_mask.py and
models/nn/vnn.py), re-implemented in one file.

Module names reproduce ALFRED's state_dict keys (emb_word, emb_action_low, enc, enc_att.scorer,
dec.vis_encoder.*, dec.cell, dec.actor, dec.mask_dec.*, dec.h_tm1_fc, dec.go, dec.emb, and with
the progress monitor dec.subgoal / dec.progress), so a `best_seen.pth` imports as is
(alfred_checkpoint.py). As in ALFRED, `emb_action_low` and `dec.emb` are one nn.Embedding and the
action logits are `actor(cont_t) @ emb.weight.T`: keep that module float and shared when
quantizing (quantize_dynamic leaves nn.Embedding alone and never swaps the module).

Shapes: B batch, L language tokens, T decoder steps, D = 2*dhid decoder width, V actions,
P = pframe (300). ALFRED quirks kept on purpose: the language self-attention and the decoder's
dot attention do not mask padding (so a padded batch attends to zero vectors, as in ALFRED).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .sizes import FLAT, RESNET_CHANNELS, VIS_CHANNELS, architecture
from .common import (
    check_batch,
    check_encode_inputs,
    check_step_inputs,
    encode_frames,
    gather_steps,
    next_input_actions,
    step_masks,
)


class SelfAttn(nn.Module):
    """Summary of the encoder states: softmax(Linear(x)) over L, weighted sum."""

    def __init__(self, dhid: int):
        super().__init__()
        self.scorer = nn.Linear(dhid, 1)

    def forward(self, inp):  # inp [B,L,D]
        scores = F.softmax(self.scorer(inp), dim=1)  # [B,L,1]
        return scores.transpose(1, 2).bmm(inp).squeeze(1)  # [B,D]


def dot_attention(inp, h):
    """inp [B,L,D], h [B,D] -> weighted sum [B,D] with softmax(inp @ h) over L. ALFRED sums
    score.expand_as(inp) * inp over L; the same sum as a product makes no [B,L,D] temporary
    (and in ONNX one MatMul instead of Expand, Mul and a slow ReduceSum)."""
    score = F.softmax(inp.bmm(h.unsqueeze(2)), dim=1)  # [B,L,1]
    return score.transpose(1, 2).bmm(inp).squeeze(1)  # [B,D]


def transposed_layout(x) -> bool:
    """Whether linear() / lstm_cell() compute their products on x as weight @ x.T: on a float32
    CPU batch [B,in], when not traced. At a few rows, a decoder step's batch, MKL's sgemm is
    slower for x @ weight.T (nn.Linear's product) than for this layout. A trace (the ONNX
    export's) records nn.Linear's product, the layout ONNX Runtime's kernels and quantizer
    expect."""
    return x.dim() == 2 and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_tracing()


def linear(layer, x):
    """layer(x) for x [B,in]: (weight @ x.T).T (+ bias) for a float nn.Linear where
    transposed_layout(x); other modules (quantized, factorised) run their own code."""
    if not (type(layer) is nn.Linear and transposed_layout(x)):
        return layer(x)
    if layer.bias is None:
        return torch.mm(layer.weight, x.t()).t()  # [B,out]
    return torch.addmm(layer.bias[:, None], layer.weight, x.t()).t()  # [B,out]


def lstm_cell(cell, x, state):
    """cell(x, (h, c)) -> (h, c) for x [B,in]: for a float nn.LSTMCell where transposed_layout(x),
    the gates W_ih x + W_hh h + biases in that layout, then nn.LSTMCell's update (gate order
    i, f, g, o); quantized modules run their own code."""
    if not (type(cell) is nn.LSTMCell and cell.bias and transposed_layout(x)):
        return cell(x, state)
    h, c = state
    gates = torch.addmm(torch.addmm((cell.bias_ih + cell.bias_hh)[:, None], cell.weight_ih, x.t()), cell.weight_hh, h.t())
    i, f, g, o = gates.t().chunk(4, 1)  # each [B,H]
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class ResnetVisualEncoder(nn.Module):
    """ResNet-18 conv features [B,512,7,7] -> [B,dframe]: two 1x1 convs with BN, then a Linear."""

    def __init__(self, dframe: int):
        super().__init__()
        c1, c2 = VIS_CHANNELS
        self.conv1 = nn.Conv2d(RESNET_CHANNELS, c1, kernel_size=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=1)
        self.fc = nn.Linear(FLAT, dframe)
        self.bn1 = nn.BatchNorm2d(c1)
        self.bn2 = nn.BatchNorm2d(c2)

    def forward(self, x):  # x [B,512,7,7]
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout for fp16/bf16 1x1 convs on CPU
        x = F.relu(self.bn1(self.conv1(x)))  # [B,256,7,7]
        x = F.relu(self.bn2(self.conv2(x)))  # [B,64,7,7]
        return linear(self.fc, x.reshape(x.shape[0], FLAT))  # [B,dframe]


def reverse_within(x, lengths):
    """x [B,L,...] with each row's first lengths[b] entries in reverse order; the rest stays."""
    index = torch.arange(x.shape[1], device=x.device)[None, :]  # [1,L]
    flipped = lengths[:, None] - 1 - index  # [B,L]
    source = torch.where(flipped >= 0, flipped, index)
    return x.gather(1, source.reshape(*source.shape, *[1] * (x.dim() - 2)).expand_as(x))


def fold_batchnorm(weight, bias, bn):
    """A transposed convolution (weight [in,out,k,k], bias [out]) followed by `bn` in eval mode,
    as one transposed convolution (in float32): BN scales and shifts each output channel."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    return weight.float() * scale[None, :, None, None], (bias.float() - bn.running_mean.float()) * scale + bn.bias.float()


def fold_upsampling(weight):
    """Nearest x2 upsampling followed by a transposed convolution (kernel k, stride 2, padding p)
    as one transposed convolution (kernel k + 2, stride 4, padding p): an upsampled pixel
    repeats its source pixel, so the kernel taps that land on the same source add up."""
    k = weight.shape[-1]
    folded = weight.new_zeros(*weight.shape[:2], k + 2, k + 2)
    for dy in (0, 2):
        for dx in (0, 2):
            folded[:, :, dy:dy + k, dx:dx + k] += weight
    return folded


def mask_features(d1, x, channels: int):
    """The mask decoder's first layer: x [B,d_in] -> ReLU(d1(x)) as [B,channels,7,7]."""
    return F.relu(linear(d1, x)).reshape(-1, channels, 7, 7)


class MaskDecoder(nn.Module):
    """[B,d_in] -> mask logits [B,1,P,P]: Linear to 64x7x7, then upsample + transposed convs
    7 -> 14 -> 28 -> 56 -> 112 -> 224, then bilinear to P x P (ALFRED: P = 300).

    Outside training the same function runs in a cheaper form (`inference_form`): each
    upsampling folded into the transposed convolution after it and each BatchNorm into the one
    before it, so the convolutions read 4x fewer input pixels, do ~1.8x fewer
    multiply-adds, and no upsampled tensor or BatchNorm pass remains. Its weights are
    derived from the parameters (which keep ALFRED's names and layout) whenever the module
    enters eval mode or loads weights; non-persistent buffers, so that they follow the
    module's device and dtype and are exported as constants. Training needs ALFRED's form:
    BatchNorm then normalises with the batch's statistics."""

    FOLDED = ("conv3", "conv2")  # (transposed conv, its BatchNorm): dconv3 + bn2, dconv2 + bn1
    FOLDED_STRIDE, FOLDED_PADDING = 4, 1  # fold_upsampling's: the upsampling's 2 x the convolution's 2

    def __init__(self, d_in: int, pframe: int = 300):
        super().__init__()
        self.pframe = pframe
        self.d1 = nn.Linear(d_in, FLAT)
        self.bn2 = nn.BatchNorm2d(32)
        self.bn1 = nn.BatchNorm2d(16)
        self.dconv3 = nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1)
        self.dconv2 = nn.ConvTranspose2d(32, 16, kernel_size=4, stride=2, padding=1)
        self.dconv1 = nn.ConvTranspose2d(16, 1, kernel_size=4, stride=2, padding=1)
        for name in self.FOLDED:
            self.register_buffer(f"{name}_weight", None, persistent=False)
            self.register_buffer(f"{name}_bias", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module.fold())
        self.fold()

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self.fold()
        return self

    @torch.no_grad()
    def fold(self) -> None:
        """Derive the inference form's weights from the parameters (in float32 where they
        are in a lower precision, then stored in theirs). Not on the meta device (a model
        skeleton before its weights are assigned, whose post-load hook folds): an op on a meta
        tensor imports torch._dynamo, seconds in every process that loads a model file."""
        if self.dconv3.weight.is_meta:
            return
        for name, conv, bn in (("conv3", self.dconv3, self.bn2), ("conv2", self.dconv2, self.bn1)):
            weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
            setattr(self, f"{name}_weight", fold_upsampling(weight).to(conv.weight.dtype))
            setattr(self, f"{name}_bias", bias.to(conv.bias.dtype))

    def forward(self, x):  # x [B,d_in]
        x = mask_features(self.d1, x, self.dconv3.in_channels)  # [B,64,7,7]
        if x.dtype == torch.float32:  # channels-last: oneDNN's fast layout for transposed convs on
            x = x.contiguous(memory_format=torch.channels_last)  # CPU in float32, not in fp16/bf16
        x = self.trained_form(x) if self.training else self.inference_form(x)  # [B,16,112,112]
        x = self.dconv1(x)  # [B,1,224,224]
        return F.interpolate(x, size=(self.pframe, self.pframe), mode="bilinear")  # [B,1,P,P]

    def trained_form(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # [B,64,14,14]
        x = F.relu(self.bn2(self.dconv3(x)))  # [B,32,28,28]
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # [B,32,56,56]
        return F.relu(self.bn1(self.dconv2(x)))  # [B,16,112,112]

    def inference_form(self, x):
        s, p = self.FOLDED_STRIDE, self.FOLDED_PADDING
        x = F.relu(F.conv_transpose2d(x, self.conv3_weight, self.conv3_bias, stride=s, padding=p))  # [B,32,28,28]
        return F.relu(F.conv_transpose2d(x, self.conv2_weight, self.conv2_bias, stride=s, padding=p))


class ConvFrameMaskDecoder(nn.Module):
    """One decoder step: attend to the language with h_{t-1}, run the LSTMCell on
    [frame, language, previous action], predict the action (tied to `emb`) and the mask."""

    def __init__(self, emb: nn.Embedding, dframe, dhid, pframe, progress_monitor, dropouts):
        super().__init__()
        demb = emb.weight.size(1)
        self.emb = emb  # the same module as the parent's emb_action_low
        self.vis_encoder = ResnetVisualEncoder(dframe)
        self.cell = nn.LSTMCell(dhid + dframe + demb, dhid)
        self.input_dropout = nn.Dropout(dropouts["input_dropout"])
        self.attn_dropout = nn.Dropout(dropouts["attn_dropout"])
        self.hstate_dropout = nn.Dropout(dropouts["hstate_dropout"])
        self.actor_dropout = nn.Dropout(dropouts["actor_dropout"])
        self.go = nn.Parameter(torch.empty(demb).uniform_(-0.1, 0.1))
        cont = dhid + dhid + dframe + demb
        self.actor = nn.Linear(cont, demb)
        self.mask_dec = MaskDecoder(cont, pframe)
        self.h_tm1_fc = nn.Linear(dhid, dhid)
        self.progress_monitor = progress_monitor
        if progress_monitor:
            self.subgoal = nn.Linear(cont, 1)
            self.progress = nn.Linear(cont, 1)

    def step(self, enc, vis_t, e_t, state_tm1):
        """enc [B,L,D], vis_t = vis_encoder(frame) [B,dframe], e_t [B,demb], state_tm1 (h, c)
        each [B,D] -> cont_t [B,D+D+dframe+demb], action logits [B,V], state_t (h, c).
        (ALFRED runs vis_encoder inside step; the caller runs it here, so that training
        encodes all frames of a batch in one call.)"""
        lang_t = dot_attention(self.attn_dropout(enc), linear(self.h_tm1_fc, state_tm1[0]))  # [B,D]
        inp_t = self.input_dropout(torch.cat([vis_t, lang_t, e_t], dim=1))  # [B,dframe+D+demb]
        h_t, c_t = (self.hstate_dropout(x) for x in lstm_cell(self.cell, inp_t, state_tm1))
        cont_t = torch.cat([h_t, inp_t], dim=1)
        # Tied output: action embedding space -> logits against every action's embedding.
        action_t = linear(self.actor, self.actor_dropout(cont_t)).mm(self.emb.weight.t())  # [B,V]
        return cont_t, action_t, (h_t, c_t)


LSTM_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # one layer's, in cuDNN's order


def pack_encoder_for_cudnn(model, incompatible_keys=None) -> None:
    """After the weights are loaded: on a CUDA device, each direction of the float encoder
    gets its weights packed into a buffer of its own, in cuDNN's layout. cuDNN runs an
    LSTM on its weights in place only when they lie so in one buffer, from its start; else
    it copies them into one on every call. The encoder runs its two directions one at a
    time (encode_language), so nn.LSTM's own flatten_parameters, one buffer for both,
    would serve the forward direction only. A temporary one-direction nn.LSTM sharing the
    direction's parameters packs them (its flatten_parameters leaves CPU weights alone)."""
    encoder = model.enc
    if not isinstance(encoder, nn.LSTM):  # the dynamic int8 encoder runs on the CPU
        return
    for suffix in ("", "_reverse"):
        direction = nn.LSTM(encoder.input_size, encoder.hidden_size, batch_first=True, device="meta")
        for name in LSTM_WEIGHTS:
            setattr(direction, f"{name}_l0", getattr(encoder, f"{name}_l0{suffix}"))
        direction.flatten_parameters()


class Seq2SeqImMask(nn.Module):
    name = "lstm"
    # What a decoder step does not read (the language is encoded once per episode) and the mask
    # decoder, which a step reads only when it decodes a mask (the benchmark's weight bytes).
    ENCODE_ONLY = ("emb_word", "enc", "enc_att")
    MASK_DECODER = "dec.mask_dec"

    def __init__(self, config: dict, vocab_sizes: dict):
        super().__init__()
        a = architecture("lstm", config)
        self.config = a
        self.teacher_forcing = a["teacher_forcing"]
        self.emb_word = nn.Embedding(vocab_sizes["word"], a["demb"])
        self.emb_action_low = nn.Embedding(vocab_sizes["action_low"], a["demb"])
        self.enc = nn.LSTM(a["demb"], a["dhid"], bidirectional=True, batch_first=True)
        self.register_load_state_dict_post_hook(pack_encoder_for_cudnn)
        self.enc_att = SelfAttn(2 * a["dhid"])
        self.dec = ConvFrameMaskDecoder(
            self.emb_action_low, a["dframe"], 2 * a["dhid"], a["pframe"], a["progress_monitor"], a
        )
        self.vis_dropout = nn.Dropout(a["vis_dropout"])
        self.lang_dropout = nn.Dropout(a["lang_dropout"])

    # --- inference interface -------------------------------------------------------------
    def encode(self, lang, lang_lengths):
        """lang [B,L] long, lang_lengths [B] -> episode state (language encoded once)."""
        batch = check_encode_inputs(lang, lang_lengths)
        emb = self.lang_dropout(self.emb_word(lang))  # [B,L,demb]
        enc = self.lang_dropout(self.encode_language(emb, lang_lengths))  # [B,max(len),D]
        cont = self.enc_att(enc)  # [B,D]: the decoder's h_0 (c_0 = 0)
        return {"batch": batch, "t": 0, "enc": enc, "h": cont, "c": torch.zeros_like(cont), "last": None}

    def encode_language(self, emb, lengths, longest=None):
        """The bidirectional encoder over each row's first `length` tokens: [B,L,demb] ->
        [B,longest,2*dhid], zero after each length; `longest` defaults to max(len), as
        pad_packed_sequence gives it (an ONNX export, whose shapes cannot depend on the
        lengths' values, passes L and gets the language cut to max(len) by its caller). A float
        nn.LSTM runs each direction on the padded batch, the backward one on rows reversed
        within their length: oneDNN's fused kernel then serves every batch, where a packed
        batch fell back to a per-token loop (the outputs are the same). The dynamic int8 LSTM
        takes the packed batch."""
        if not isinstance(self.enc, nn.LSTM):
            packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
            return pad_packed_sequence(self.enc(packed)[0], batch_first=True)[0]
        lengths = lengths.to(emb.device)
        h0 = emb.new_zeros(1, emb.shape[0], self.enc.hidden_size)
        forward = self._lstm_direction(emb, h0, "")
        backward = reverse_within(self._lstm_direction(reverse_within(emb, lengths), h0, "_reverse"), lengths)
        longest = int(lengths.max()) if longest is None else longest
        inside = torch.arange(longest, device=emb.device)[None, :] < lengths[:, None]  # [B,longest]
        return torch.cat([forward, backward], 2)[:, :longest] * inside[:, :, None]

    def _lstm_direction(self, x, h0, suffix: str):
        """One direction of self.enc (suffix "" or "_reverse") over x [B,L,demb], left to right."""
        weights = [getattr(self.enc, f"{name}_l0{suffix}") for name in LSTM_WEIGHTS]
        return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]  # [B,L,dhid]

    def step(self, state, frames_t, prev_action=None, *, with_mask=True):
        """One decoder step for the whole batch.

        frames_t [B,512,7,7]; prev_action [B] long: the action taken at the previous step
        (teacher forcing), or None: the model's own argmax from the previous step. Step 0
        always starts from the learned `go` input and takes prev_action=None.
        -> (action_logits [B,V], mask_logits (see common.step_masks: [B,1,P,P] by default), state)."""
        check_step_inputs(state, frames_t, prev_action)
        vis_t = self.dec.vis_encoder(self.vis_dropout(frames_t))  # [B,dframe]
        cont_t, action_t, state = self._step(state, vis_t, prev_action)
        mask_t = step_masks(self.dec.mask_dec, cont_t, action_t, with_mask)
        return action_t, mask_t, state

    def _step(self, state, vis_t, prev_action):
        """vis_t [B,dframe] -> cont_t [B,cont], action logits [B,V], the next state."""
        e_t = self._prev_embedding(state, prev_action)  # [B,demb]
        h_c = (state["h"], state["c"])
        cont_t, action_t, (h, c) = self.dec.step(state["enc"], vis_t, e_t, h_c)
        return cont_t, action_t, dict(state, t=state["t"] + 1, h=h, c=c, last=action_t.argmax(1))

    def _prev_embedding(self, state, prev_action):
        actions = next_input_actions(state, prev_action)
        if actions is None:
            return self.dec.go.unsqueeze(0).expand(state["batch"], -1)
        return self.emb_action_low(actions)

    # --- training ------------------------------------------------------------------------
    def forward(self, batch, teacher_forcing=None, mask_steps=None):
        """Whole sequences. batch: the loader's dict (lang, lang_lengths, frames [B,T,512,7,7],
        actions [B,T], valid_interact [B,T]). Teacher forcing (default: the config's) feeds the
        gold previous action; without it the model's own argmax, as ALFRED's default.
        -> dict: action_logits [B,T,V]; mask_logits [N,1,P,P] at the N steps of mask_steps
        [B,T] bool (default: valid_interact), row-major over (b, t); with the progress monitor also
        subgoal [B,T] and progress [B,T] (sigmoid outputs)."""
        check_batch(batch)
        tf = self.teacher_forcing if teacher_forcing is None else teacher_forcing
        actions = batch["actions"]
        mask_steps = batch["valid_interact"] if mask_steps is None else mask_steps
        state = self.encode(batch["lang"], batch["lang_lengths"])
        frames = self.vis_dropout(batch["frames"])
        vis = encode_frames(self.dec.vis_encoder, frames)  # [B,T,dframe]
        logits, conts = [], []
        for t in range(actions.shape[1]):
            prev = actions[:, t - 1] if (tf and t > 0) else None
            cont_t, action_t, state = self._step(state, vis[:, t], prev)
            logits.append(action_t)
            conts.append(cont_t)
        conts = torch.stack(conts, 1)  # [B,T,cont]
        out = {"action_logits": torch.stack(logits, 1)}  # [B,T,V]
        # The mask decoder is the costliest part of a step: run it only where a mask is supervised.
        out["mask_logits"] = self.dec.mask_dec(gather_steps(conts, mask_steps))  # [N,1,P,P]
        if self.dec.progress_monitor:
            out["subgoal"] = torch.sigmoid(self.dec.subgoal(conts)).squeeze(-1)  # [B,T]
            out["progress"] = torch.sigmoid(self.dec.progress(conts)).squeeze(-1)  # [B,T]
        return out
