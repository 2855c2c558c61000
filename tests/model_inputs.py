"""Tiny models, vocabularies, random batches in the loader's format and synthetic stores,
for the model and training tests."""
import pytest
import torch

TINY = {
    "lstm": {"demb": 16, "dhid": 24, "dframe": 40},
    "transformer": {"d_model": 32, "heads": 2, "ffn": 48, "dframe": 40},
}


# the quantize job's tests: small masks (pframe) keep their evaluations fast
JOB_SIZES = {"lstm": {"demb": 8, "dhid": 16, "dframe": 32, "pframe": 20},
             "transformer": {"d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ffn": 32,
                             "dframe": 32, "pframe": 20}}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (imported by each test module): on a shared 2-core machine, more
    threads spin against the other jobs and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(name, seed=0, **overrides):
    from alfred_edge.models import build_model

    torch.manual_seed(seed)
    return build_model(name, {**TINY[name], **overrides}, tiny_vocab()).eval()

def write_fp32(folder, vocab_path, name="lstm", cost_only=False):
    """A seeded model at JOB_SIZES on the store's vocabulary, saved as folder/<name>/fp32.pt
    (the quantize job's input)."""
    from alfred_edge.data.vocab import load_vocab
    from alfred_edge.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model(name, JOB_SIZES[name], load_vocab(vocab_path))
    (folder / name).mkdir(parents=True, exist_ok=True)
    save_model(model, folder / name / "fp32.pt", **({"cost_only": True} if cost_only else {}))
    return folder / name / "fp32.pt"


N_WORDS, N_ACTIONS = 40, 15


def tiny_vocab():
    return {
        "word": ["<<pad>>", "<<seg>>", "<<goal>>", "<<stop>>", "<<unk>>"] + [f"w{i}" for i in range(N_WORDS - 5)],
        "action_low": ["<<pad>>", "<<seg>>", "<<stop>>"] + [f"A{i}" for i in range(N_ACTIONS - 3)],
        "action_high": ["<<pad>>", "<<seg>>", "<<stop>>", "GotoLocation", "NoOp"],
    }


def random_batch(vocab, seed=0, lang_lengths=(11, 6, 9), frame_lengths=(7, 4, 6)):
    """A padded batch like alfred_edge.data.loader.collate's: actions end in <<stop>> (2),
    0 after; some non-stop steps are interaction steps."""
    g = torch.Generator().manual_seed(seed)
    lang_lengths, frame_lengths = torch.tensor(lang_lengths), torch.tensor(frame_lengths)
    B, L, T = len(lang_lengths), int(lang_lengths.max()), int(frame_lengths.max())
    real_lang = torch.arange(L) < lang_lengths[:, None]
    lang = torch.randint(3, len(vocab["word"]), (B, L), generator=g) * real_lang
    steps = torch.arange(T)[None, :]
    actions = torch.randint(3, len(vocab["action_low"]), (B, T), generator=g)
    actions = torch.where(steps == frame_lengths[:, None] - 1, torch.full_like(actions, 2), actions)
    actions = actions * (steps < frame_lengths[:, None])
    interact = (torch.rand(B, T, generator=g) < 0.5) & (actions > 2)
    interact[0, 0] = True
    frames = torch.rand(B, T, 512, 7, 7, generator=g) * (steps < frame_lengths[:, None])[..., None, None, None]
    return {
        "lang": lang, "lang_lengths": lang_lengths, "frames": frames, "frame_lengths": frame_lengths,
        "actions": actions, "valid_interact": interact,
        "high_idx": torch.zeros(B, T, dtype=torch.long),
    }


def build_store(root, trajectories, annotations_per_trajectory=3, nav_steps=(2, 5), seed=0, dtype="float16"):
    """A synthetic store under root/store (vocab.json and one folder per split), written by the
    data package's own functions, as the pipeline's data rules do. Returns root/store."""
    import json
    from pathlib import Path

    from alfred_edge.data import preprocess, subset, synthetic
    from alfred_edge.data.vocab import build_vocab, vocab_text

    root = Path(root)
    specs = synthetic.trajectory_specs(seed, trajectories, annotations_per_trajectory, tuple(nav_steps))
    raw = root / "raw"
    synthetic.write_tree(specs, tuple(nav_steps), raw, root / "splits.json", progress=False)
    rows = synthetic.manifest_rows(specs)
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    docs = {}
    for split, count in trajectories.items():
        docs[split] = root / f"subset_{split}.json"
        docs[split].write_text(json.dumps(subset.subset_document(rows, split, count, seed)))
    train = json.loads(docs["train"].read_text())["trajectories"]
    vocab = build_vocab(preprocess.read_traj(raw / "train" / t["task"] / "traj_data.json") for t in train)
    (store / "vocab.json").write_text(vocab_text(vocab))
    for split in trajectories:
        preprocess.preprocess_split(split, docs[split], store / "vocab.json", raw, store / split, dtype,
                                    "fail", planned_bytes=0, budget_bytes=10**15, progress=False)
    return store
