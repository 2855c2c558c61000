"""Tiny vocabularies and random batches in the loader's format, for the model tests."""
import torch

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
