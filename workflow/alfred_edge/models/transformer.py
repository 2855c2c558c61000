"""`transformer`: a shallow encoder-decoder for the same task as `lstm`, built offline from a
Hugging Face `BartConfig` (no download; `transformers` is imported only in this module).

    encoder: BART encoder over goal + instruction tokens            lang [B,L] -> memory [B,L,d]
    decoder: causal BART decoder, cross-attending to the memory; its input at step t is
             frame_proj(vis_encoder(frame_t)) + emb_action_low(action_{t-1})   (step 0: `go`)
    heads:   as in ALFRED, on cont_t = [h_t, x_t] [B,2d]: action logits tied to the action
             embedding (actor(cont_t) @ emb_action_low.weight.T) and a 300x300 mask decoder.

`emb_action_low` is the decoder's own token embedding (one nn.Embedding, two names), so the tie
survives quantize_dynamic, which leaves embeddings float. Step-by-step decoding keeps a
key/value cache (config kv_cache: true) so a step costs the same at step 1 and step 64; with
kv_cache: false each step reruns the decoder over the whole prefix (for comparison).
Shapes: B batch, L language tokens, T steps, d = d_model, V actions, P = pframe.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import BartConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.bart.modeling_bart import BartDecoder, BartEncoder

from .common import (
    check_batch,
    check_encode_inputs,
    check_step_inputs,
    encode_frames,
    gather_steps,
    next_input_actions,
    pad_mask,
    step_masks,
)
from .lstm import MaskDecoder, ResnetVisualEncoder
from .sizes import architecture

# transformers renamed the decoder's `past_key_values` argument to `cache` (5.2x); older
# releases (Python 3.10 on JetPack 6 caps transformers at 5.20) only know the old name.
_CACHE_ARG = "cache" if "cache" in inspect.signature(BartDecoder.forward).parameters else "past_key_values"


def _bart_config(a: dict, vocab_size: int) -> BartConfig:
    return BartConfig(
        vocab_size=vocab_size,
        d_model=a["d_model"],
        encoder_layers=a["encoder_layers"],
        decoder_layers=a["decoder_layers"],
        encoder_attention_heads=a["heads"],
        decoder_attention_heads=a["heads"],
        encoder_ffn_dim=a["ffn"],
        decoder_ffn_dim=a["ffn"],
        max_position_embeddings=a["max_positions"],
        dropout=a["dropout"],
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        pad_token_id=0,
        scale_embedding=False,
        use_cache=True,
    )


class Seq2SeqTransformer(nn.Module):
    name = "transformer"
    ENCODE_ONLY = ("encoder",)  # as in lstm.Seq2SeqImMask
    MASK_DECODER = "mask_dec"

    def __init__(self, config: dict, vocab_sizes: dict):
        super().__init__()
        a = architecture("transformer", config)
        if a["d_model"] % a["heads"]:
            raise ValueError(f"models.transformer: d_model {a['d_model']} is not divisible by heads {a['heads']}")
        self.config = a
        self.kv_cache = a["kv_cache"]
        d = a["d_model"]
        self.encoder = BartEncoder(_bart_config(a, vocab_sizes["word"]))
        self.decoder = BartDecoder(_bart_config(a, vocab_sizes["action_low"]))
        self.emb_action_low = self.decoder.embed_tokens  # shared: the tied action embedding
        self.vis_encoder = ResnetVisualEncoder(a["dframe"])
        self.frame_proj = nn.Linear(a["dframe"], d)
        self.go = nn.Parameter(torch.empty(d).uniform_(-0.1, 0.1))
        self.actor = nn.Linear(2 * d, d)
        self.mask_dec = MaskDecoder(2 * d, a["pframe"])

    # --- inference interface -------------------------------------------------------------
    def encode(self, lang, lang_lengths):
        """lang [B,L] long, lang_lengths [B] -> episode state (language encoded once)."""
        batch = check_encode_inputs(lang, lang_lengths)
        self._check_positions(lang.shape[1], "language tokens")
        memory_mask = pad_mask(lang_lengths.to(lang.device), lang.shape[1]).long()  # [B,L]
        memory = self.encoder(input_ids=lang, attention_mask=memory_mask).last_hidden_state  # [B,L,d]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache()) if self.kv_cache else None
        return {
            "batch": batch, "t": 0, "memory": memory, "memory_mask": memory_mask,
            "cache": cache, "inputs": memory.new_zeros(batch, 0, memory.shape[-1]), "last": None,
        }  # fmt: skip

    def step(self, state, frames_t, prev_action=None, *, with_mask=True):
        """One decoder step for the whole batch; the state's cache is updated in place, so
        pass each state to step once. frames_t [B,512,7,7]; prev_action [B] long (teacher
        forcing) or None (the model's own last argmax; step 0 always starts from `go`).
        -> (action_logits [B,V], mask_logits (see common.step_masks: [B,1,P,P] by default), state)."""
        check_step_inputs(state, frames_t, prev_action)
        cont_t, action_t, state = self._step(state, frames_t, prev_action)
        mask_t = step_masks(self.mask_dec, cont_t, action_t, with_mask)
        return action_t, mask_t, state

    def _step(self, state, frames_t, prev_action):
        """-> cont_t [B,2d], action logits [B,V], the next state."""
        self._check_positions(state["t"] + 1, "decoder steps")
        x_t = self.frame_proj(self.vis_encoder(frames_t)) + self._prev_embedding(state, prev_action)  # [B,d]
        if self.kv_cache:
            h_t = self._decode(x_t.unsqueeze(1), state, cache=state["cache"])[:, -1]  # [B,d]
            inputs = state["inputs"]
        else:  # rerun the decoder over the whole prefix
            inputs = torch.cat([state["inputs"], x_t.unsqueeze(1)], 1)  # [B,t+1,d]
            h_t = self._decode(inputs, state, cache=None)[:, -1]
        cont_t = torch.cat([h_t, x_t], 1)  # [B,2d]
        action_t = self._action_logits(cont_t)
        return cont_t, action_t, dict(state, t=state["t"] + 1, inputs=inputs, last=action_t.argmax(1))

    def _decode(self, inputs_embeds, state, cache):
        kwargs = {_CACHE_ARG: cache, "use_cache": cache is not None}
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=state["memory"],
            encoder_attention_mask=state["memory_mask"],
            **kwargs,
        )
        return out.last_hidden_state

    def _prev_embedding(self, state, prev_action):
        actions = next_input_actions(state, prev_action)
        if actions is None:
            return self.go.unsqueeze(0).expand(state["batch"], -1)  # [B,d]
        return self.emb_action_low(actions)

    def _action_logits(self, cont):  # cont [...,2d] -> [...,V], tied to the action embedding
        return self.actor(cont) @ self.emb_action_low.weight.t()

    def _check_positions(self, n: int, what: str):
        if n > self.config["max_positions"]:
            raise ValueError(f"{n} {what} exceed the transformer's max_positions = {self.config['max_positions']}")

    # --- training ------------------------------------------------------------------------
    def forward(self, batch, teacher_forcing=None, mask_steps=None):
        """Whole sequences, as lstm.forward: -> action_logits [B,T,V] and mask_logits [N,1,P,P]
        at the N steps of mask_steps [B,T] bool (default: valid_interact). Teacher forcing (the default for this model) decodes all
        steps in one causal pass; without it the model feeds back its own argmax step by step."""
        check_batch(batch)
        frames, actions = batch["frames"], batch["actions"]
        mask_steps = batch["valid_interact"] if mask_steps is None else mask_steps
        B, T = actions.shape
        self._check_positions(T, "decoder steps")
        state = self.encode(batch["lang"], batch["lang_lengths"])
        if teacher_forcing is False:  # default (None): teacher forcing
            conts = []
            for t in range(T):
                cont_t, _, state = self._step(state, frames[:, t], None)
                conts.append(cont_t)
            cont = torch.stack(conts, 1)  # [B,T,2d]
        else:
            vis = self.frame_proj(encode_frames(self.vis_encoder, frames))  # [B,T,d]
            prev = torch.cat([self.go.expand(B, 1, -1), self.emb_action_low(actions[:, :-1])], 1)  # [B,T,d]
            x = vis + prev
            h = self._decode(x, state, cache=None)  # [B,T,d], causal
            cont = torch.cat([h, x], -1)  # [B,T,2d]
        return {
            "action_logits": self._action_logits(cont),  # [B,T,V]
            "mask_logits": self.mask_dec(gather_steps(cont, mask_steps)),  # [N,1,P,P]
        }
