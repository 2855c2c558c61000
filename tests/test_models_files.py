"""Model files (fp32.pt): save -> load on the device is exact and keeps the tie; bad files and
vocabulary mismatches give errors that name the file."""
import json

import pytest
import torch

from alfred_edge.models import check_vocab, load_model, save_model

from model_inputs import one_thread, random_batch, tiny_model, tiny_vocab  # noqa: F401 (fixture)

@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_save_then_load_reproduces_outputs_and_tie(name, tmp_path):
    model = tiny_model(name)
    path = tmp_path / "fp32.pt"
    save_model(model, path)
    loaded = load_model(path, "cpu")
    assert not loaded.training and loaded.emb_action_low is (loaded.dec.emb if name == "lstm" else loaded.decoder.embed_tokens)
    batch = random_batch(tiny_vocab())
    with torch.no_grad():
        for key, value in model(batch).items():
            assert torch.equal(value, loaded(batch)[key]), key
    record = torch.load(path, weights_only=True)  # a plain dict: no code runs on load
    assert record["model"] == name and record["vocab_sizes"] == {"word": 40, "action_low": 15}


def test_loaded_model_file_is_memory_mapped(tmp_path):
    path = tmp_path / "fp32.pt"
    save_model(tiny_model("lstm"), path)
    loaded = load_model(path, "cpu")
    # The weights live in the file's memory mapping, not in a private copy (Linux: /proc/self/maps).
    address = loaded.dec.cell.weight_ih.data_ptr()
    mapped = []
    for line in open("/proc/self/maps"):
        span, *rest = line.split()
        if rest and rest[-1] == str(path):
            start, end = (int(x, 16) for x in span.split("-"))
            mapped.append(start <= address < end)
    assert any(mapped), mapped


def test_vocabulary_mismatch_names_both_files(tmp_path):
    path = tmp_path / "fp32.pt"
    save_model(tiny_model("lstm"), path)
    vocab = tiny_vocab()
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    check_vocab(load_model(path), tmp_path / "vocab.json")  # same vocabulary: fine
    vocab["word"][7], vocab["word"][8] = vocab["word"][8], vocab["word"][7]  # same sizes, other ids
    (tmp_path / "other.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"fp32.pt: trained on another vocabulary than .*other.json"):
        load_model(path, "cpu", vocab_path=tmp_path / "other.json")


def test_size_mismatch_names_the_keys(tmp_path):
    path = tmp_path / "fp32.pt"
    model = tiny_model("lstm")
    save_model(model, path)
    record = torch.load(path, weights_only=True)
    record["config"]["dframe"] = 48
    torch.save(record, tmp_path / "resized.pt")
    with pytest.raises(ValueError, match=r"resized.pt: weights do not fit .*dec.vis_encoder.fc.weight"):
        load_model(tmp_path / "resized.pt")


@pytest.mark.parametrize("cut", [0, 100, 0.5])
def test_truncated_file_names_the_file(tmp_path, cut):
    path = tmp_path / "fp32.pt"
    save_model(tiny_model("transformer"), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(ValueError, match="fp32.pt: not a readable alfred-edge model file"):
        load_model(path)


def test_foreign_files_name_the_file(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match=r"state.pt: not an alfred-edge model file \(format None"):
        load_model(tmp_path / "state.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match="notes.pt: not a readable"):
        load_model(tmp_path / "notes.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


def test_an_lstm_loaded_on_cuda_packs_each_encoder_direction_into_its_own_buffer(tmp_path, monkeypatch):
    """cuDNN uses an LSTM's weights in place only when they lie in one buffer from its start
    (else it copies them on every call); the encoder runs its directions one at a time, so
    each needs a buffer of its own, packed once at load. nn.LSTM.flatten_parameters packs
    only CUDA weights: here it is replaced by what it does there, on these CPU weights."""
    from alfred_edge.models.lstm import LSTM_WEIGHTS

    packed = []

    def pack_as_on_cuda(lstm):
        weights = lstm._flat_weights
        if any(w.is_meta for w in weights):  # a skeleton's weights, as any not on a CUDA device
            return
        buffer = torch.cat([w.detach().reshape(-1) for w in weights])
        offset = 0
        with torch.no_grad():
            for w in weights:
                w.set_(buffer.untyped_storage(), offset, w.shape)
                offset += w.numel()
        packed.append((lstm.bidirectional, lstm.num_layers))

    model = tiny_model("lstm")
    save_model(model, tmp_path / "fp32.pt")
    monkeypatch.setattr(torch.nn.LSTM, "flatten_parameters", pack_as_on_cuda)
    loaded = load_model(tmp_path / "fp32.pt", "cpu")
    assert packed == [(False, 1), (False, 1)]
    buffers = set()
    for suffix in ("", "_reverse"):
        weights = [getattr(loaded.enc, f"{name}_l0{suffix}") for name in LSTM_WEIGHTS]
        assert len({w.untyped_storage().data_ptr() for w in weights}) == 1 and weights[0].storage_offset() == 0
        buffers.add(weights[0].untyped_storage().data_ptr())
    assert len(buffers) == 2
    batch = random_batch(tiny_vocab())
    with torch.no_grad():
        expected = model.encode(batch["lang"], batch["lang_lengths"])["enc"]
        assert torch.equal(loaded.encode(batch["lang"], batch["lang_lengths"])["enc"], expected)
    assert len(packed) == 2  # once, at load: not on every encode


def test_loading_an_lstm_file_imports_no_compiler(tmp_path):
    """A benchmark process loads one model file: building the skeleton on the meta device must
    run no op there (an op on a meta tensor imports torch._dynamo, seconds per process)."""
    import subprocess
    import sys

    path = tmp_path / "lstm.pt"
    save_model(tiny_model("lstm"), path)
    code = ("import sys; from alfred_edge.models import load_model; "
            f"model = load_model({str(path)!r}); print('torch._dynamo' in sys.modules, "
            "model.dec.mask_dec.conv3_weight is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # no compiler imported, and the inference form folded after the load
