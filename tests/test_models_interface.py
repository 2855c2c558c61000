"""The inference interface of both models: encode/step equals the whole-sequence forward,
the transformer's KV cache changes nothing, batch sizes are checked, and the variants the
quantize stage makes (dynamic int8, fp16, bf16) still step on CPU."""
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from alfred_edge.models.common import chosen_interactions
from model_inputs import one_thread, random_batch, tiny_model, tiny_vocab  # noqa: F401 (fixture)


def run_steps(model, batch, teacher_forcing=True):
    """Drive encode/step over the batch -> action logits [B,T,V], mask logits [B,T,1,P,P]."""
    state = model.encode(batch["lang"], batch["lang_lengths"])
    actions, masks = [], []
    for t in range(batch["actions"].shape[1]):
        prev = batch["actions"][:, t - 1] if (teacher_forcing and t > 0) else None
        logits, mask, state = model.step(state, batch["frames"][:, t], prev)
        actions.append(logits)
        masks.append(mask)
    return torch.stack(actions, 1), torch.stack(masks, 1)


def real_steps(batch):
    return torch.arange(batch["actions"].shape[1])[None, :] < batch["frame_lengths"][:, None]


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_step_by_step_equals_whole_sequence_forward(name):
    model, batch = tiny_model(name), random_batch(tiny_vocab())
    with torch.no_grad():
        whole = model(batch, teacher_forcing=True)
        actions, masks = run_steps(model, batch)
    real = real_steps(batch)
    assert whole["action_logits"].shape == actions.shape == (3, 7, 15)
    torch.testing.assert_close(actions[real], whole["action_logits"][real], atol=1e-5, rtol=0)
    assert whole["mask_logits"].shape == (int(batch["valid_interact"].sum()), 1, 300, 300)
    torch.testing.assert_close(masks[batch["valid_interact"]], whole["mask_logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_free_running_forward_feeds_back_its_own_argmax(name):
    model, batch = tiny_model(name), random_batch(tiny_vocab(), seed=1)
    with torch.no_grad():
        free = model(batch, teacher_forcing=False)["action_logits"]
        stepped, _ = run_steps(model, batch, teacher_forcing=False)
        forced = model(batch, teacher_forcing=True)["action_logits"]
    real = real_steps(batch)
    torch.testing.assert_close(stepped[real], free[real], atol=1e-5, rtol=0)
    assert not torch.allclose(free[real], forced[real], atol=1e-3)  # the fed-back actions differ


def test_transformer_cached_decoding_equals_uncached():
    cached, uncached = tiny_model("transformer"), tiny_model("transformer", kv_cache=False)
    uncached.load_state_dict(cached.state_dict())
    batch = random_batch(tiny_vocab(), seed=2)
    with torch.no_grad():
        a_cached, m_cached = run_steps(cached, batch)
        a_uncached, m_uncached = run_steps(uncached, batch)
    torch.testing.assert_close(a_cached, a_uncached, atol=1e-5, rtol=0)
    torch.testing.assert_close(m_cached, m_uncached, atol=1e-5, rtol=0)


def test_lstm_language_encoding_equals_the_packed_bidirectional_lstm():
    """The encoder runs each direction on the padded batch (oneDNN's fast path on CPU); it
    must give what the packed sequence gives: each row's own tokens, zero after its length."""
    model = tiny_model("lstm")
    lengths = torch.tensor([5, 9, 1, 7])
    emb = torch.randn(4, 9, model.enc.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        expected = pad_packed_sequence(model.enc(packed)[0], batch_first=True)[0]
        torch.testing.assert_close(model.encode_language(emb, lengths), expected, atol=1e-6, rtol=0)


def test_lstm_transposed_products_equal_the_modules_with_their_gradients():
    """linear() and lstm_cell() compute float32 CPU products as weight @ x.T (faster in MKL at a
    few rows); outputs and the gradients training takes from them must be the modules' own."""
    from alfred_edge.models.lstm import linear, lstm_cell

    generator = torch.Generator().manual_seed(0)
    layer, cell = torch.nn.Linear(12, 7), torch.nn.LSTMCell(12, 5)
    x = torch.randn(3, 12, generator=generator, requires_grad=True)
    state = (torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator))
    for ours, theirs in ((lambda: linear(layer, x), lambda: layer(x)),
                         (lambda: torch.cat(lstm_cell(cell, x, state), 1), lambda: torch.cat(cell(x, state), 1))):
        outputs, grads = [], []
        for compute in (ours, theirs):
            out = compute()
            outputs.append(out)
            grads.append(torch.autograd.grad((out * torch.arange(out.numel()).reshape(out.shape)).sum(), x)[0])
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=0)


def test_lstm_step_in_float32_equals_the_modules_in_float64():
    """A whole decoder step (transposed products in float32) against the same model in float64,
    where every layer runs its module's own code."""
    model = tiny_model("lstm")
    batch = random_batch(tiny_vocab(), seed=3, lang_lengths=(4, 6, 2), frame_lengths=[2] * 3)
    outputs = []
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            model = model.to(dtype)
            state = model.encode(batch["lang"], batch["lang_lengths"])
            logits, mask, state = model.step(state, batch["frames"][:, 0].to(dtype))
            outputs.append([logits, mask, state["h"], state["c"]])
    for ours, reference in zip(*outputs):
        torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_batch_size_comes_from_the_caller(name):
    model = tiny_model(name)
    for seed, lengths in ((0, (5,)), (1, (9, 3, 4, 6, 2))):
        batch = random_batch(tiny_vocab(), seed=seed, lang_lengths=lengths, frame_lengths=[3] * len(lengths))
        with torch.no_grad():
            state = model.encode(batch["lang"], batch["lang_lengths"])
            logits, mask, _ = model.step(state, batch["frames"][:, 0])
        assert logits.shape == (len(lengths), 15) and mask.shape == (len(lengths), 1, 300, 300)


@pytest.mark.parametrize("name, seed", [("lstm", 5), ("transformer", 10)])  # seeds whose rows differ
def test_masks_only_for_rows_whose_action_interacts(name, seed):
    """with_mask chosen_interactions([V] bool over the actions): the masks of exactly the rows
    whose argmax it marks, equal to those rows of the every-row masks; none when no action is
    marked."""
    model = tiny_model(name)
    batch = random_batch(tiny_vocab(), seed=seed, lang_lengths=(4, 5, 6, 7, 3, 5), frame_lengths=[2] * 6)

    def first_step(with_mask):
        state = model.encode(batch["lang"], batch["lang_lengths"])
        return model.step(state, batch["frames"][:, 0], with_mask=with_mask)

    with torch.no_grad():
        logits, every, _ = first_step(True)
        chosen = logits.argmax(1).tolist()
        marked = torch.zeros(logits.shape[1], dtype=torch.bool)
        marked[min(set(chosen), key=chosen.count)] = True  # the rarest chosen action
        rows = marked[logits.argmax(1)]
        _, some, _ = first_step(chosen_interactions(marked))
        _, none, _ = first_step(chosen_interactions(torch.zeros_like(marked)))
    assert 0 < int(rows.sum()) < len(chosen)
    assert some.shape == (int(rows.sum()), 1, 300, 300)
    torch.testing.assert_close(some, every[rows], atol=1e-5, rtol=0)
    assert none.shape == (0, 1, 300, 300)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_mismatched_batch_sizes_raise_clear_errors(name):
    model, batch = tiny_model(name), random_batch(tiny_vocab())
    with torch.no_grad():
        with pytest.raises(ValueError, match="batch size mismatch"):
            model.encode(batch["lang"], batch["lang_lengths"][:2])
        state = model.encode(batch["lang"], batch["lang_lengths"])
        with pytest.raises(ValueError, match=r"frames_t must be \[B,512,7,7\] with B = 3"):
            model.step(state, batch["frames"][:2, 0])
        with pytest.raises(ValueError, match="step 0 starts from the learned `go`"):
            model.step(state, batch["frames"][:, 0], batch["actions"][:, 0])
        _, _, state = model.step(state, batch["frames"][:, 0])
        with pytest.raises(ValueError, match=r"prev_action must be \[B\] with B = 3"):
            model.step(state, batch["frames"][:, 1], batch["actions"][:2, 0])
        bad = dict(batch, actions=batch["actions"][:2])
        with pytest.raises(ValueError, match="batch size mismatch between tensors"):
            model(bad)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_action_head_is_tied_to_the_action_embedding(name):
    model = tiny_model(name)
    shared = model.dec.emb if name == "lstm" else model.decoder.embed_tokens
    assert shared is model.emb_action_low and isinstance(shared, torch.nn.Embedding)
    batch = random_batch(tiny_vocab(), seed=4)
    with torch.no_grad():
        before = model(batch)["action_logits"]
        model.emb_action_low.weight[5] += 1.0  # moving one action's embedding moves its logit
        after = model(batch)["action_logits"]
    changed = (before - after).abs().amax(dim=(0, 1)) > 0
    assert changed[5] and changed.sum() >= 1


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_dynamic_int8_model_steps_and_stays_close(name):
    model, batch = tiny_model(name), random_batch(tiny_vocab(), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear, torch.nn.LSTM, torch.nn.LSTMCell}, dtype=torch.qint8
        )
    assert type(quantized.emb_action_low) is type(model.emb_action_low)  # embeddings stay float
    if name == "lstm":
        assert "dynamic" in type(quantized.dec.cell).__module__ and quantized.dec.emb is quantized.emb_action_low
    with torch.no_grad():
        want, _ = run_steps(model, batch)
        got, masks = run_steps(quantized, batch)
        whole = quantized(batch)
    real = real_steps(batch)
    assert torch.isfinite(got).all() and torch.isfinite(masks).all()
    assert (got[real] - want[real]).abs().max() < 0.5
    # Dynamic quantization scales activations per call, so batched and stepped calls differ a little.
    assert (got[real] - whole["action_logits"][real]).abs().max() < 0.1


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_step_on_cpu(name, dtype):
    model, batch = tiny_model(name), random_batch(tiny_vocab(), seed=6)
    with torch.no_grad():
        want, _ = run_steps(model, batch)
        low = tiny_model(name).to(dtype)
        low.load_state_dict(model.state_dict())
        got, masks = run_steps(low, dict(batch, frames=batch["frames"].to(dtype)))
    real = real_steps(batch)
    assert got.dtype == dtype and masks.dtype == dtype
    assert (got[real].float() - want[real]).abs().max() < 0.5
