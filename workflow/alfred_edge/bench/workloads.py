"""Workloads: what one timed iteration runs (the backend side of optimum-benchmark's split).

    IdentityWorkload   an identity module on a fixed tensor: the harness's own overhead
    EpisodeWorkload    ALFRED-style decoding of a batch of B episodes: language encoded once,
                       then one `step` per frame, for min(max_steps, longest episode) steps (the
                       fewest over the pool's batches, so that all decode as many), in one of
                       two modes (config bench.workload):
                         expert  the previous action fed is the expert's (the store's gold
                                 action), and a mask is decoded exactly at the expert's
                                 interaction steps: every variant, model and host decodes the
                                 same actions and masks, so their costs compare the same work
                                 (MLPerf's rule: the same queries for every system under test)
                         policy  the model's own previous action (argmax), as ALFRED's agent
                                 runs, and a mask for each row whose chosen action interacts;
                                 the variants then do different work, so the cell records the
                                 actions it chose (the first pass over the pool) for their
                                 agreement with fp32's
                       mask_fraction records the share of rows that decoded a mask. Its model
                       and batches come from the store and a model file (real cells) or from
                       FakeEpisodeModel and random tensors (harness self-tests, `--model fake`).
    make_workload      the workload a job's spec names

A cell decodes a pool of the split's first EPISODE_POOL episodes (B of them, when B is larger),
B at a time, batch after batch in turn: iterations at batch 1, 2, 4 and 8 decode the same 8
episodes, so their per-sample latencies compare the batch size, not which episodes (and how
many masks) each happened to get. The timed loop ends on a whole pass over the pool (or at
its time cap once one pass is done), and the work a cell records is that first pass's.

Each step's outputs are checked against the requested batch size: a batch that silently
stayed fixed (the manual runs' failure) becomes a BatchSizeError, not a number.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from alfred_edge.bench.harness import WORKLOADS, BatchSizeError
from alfred_edge.data.dataset import FRAME_SHAPE
from alfred_edge.models.common import chosen_interactions, step_masks

MASK_SHAPE = (1, 300, 300)
EPISODE_POOL = 8  # episodes every cell decodes in turn (batches 1, 2, 4 and 8 all cover the same 8)


def make_workload(spec: dict, batch_size: int, max_steps: int):
    """The workload of spec["model"] ("identity", "fake", or a model file's) on spec["device"]."""
    model, device = spec["model"], spec["device"]
    if model == "identity":
        return IdentityWorkload(batch_size, device)
    if model == "fake":
        fault = spec.get("fault")
        load = lambda dev: FakeEpisodeModel(fault=fault).to(dev)  # noqa: E731
        make_batches = lambda: fake_batches(batch_size, max_steps)  # noqa: E731
    else:
        from alfred_edge.models import model_class

        model_class(spec["architecture"])  # its code imported here, not in the timed load (transformers: seconds)
        load = lambda dev: load_model_file(spec["model_path"], dev, spec.get("backend", "eager"),  # noqa: E731
                                           spec.get("provider"), spec.get("threads"))
        make_batches = lambda: store_batches(spec["store_dir"], batch_size, max_steps, spec["features"])  # noqa: E731
    return EpisodeWorkload(batch_size, device, load, make_batches, max_steps, spec["workload"])


def load_model_file(path: str, device, backend: str = "eager", provider: str | None = None,
                    threads: int | None = None):
    """fp32.pt and every eager variant file load through quantize's load_variant, an
    onnxruntime variant folder through load_onnx_variant on `provider` with `threads`; both
    raise VariantUnavailable (→ skipped) when the variant cannot run there (onnxruntime or
    the provider absent included)."""
    if backend == "onnxruntime":
        from alfred_edge.quantize.onnx_variants import load_onnx_variant

        return load_onnx_variant(path, provider, threads)
    from alfred_edge.quantize import load_variant

    return load_variant(path, device)


def batches_per_pass(batch_size: int) -> int:
    """Batches of B that cover the pool: ceil(EPISODE_POOL / B), one when B >= EPISODE_POOL."""
    return -(-EPISODE_POOL // batch_size)


class DeviceAbsent(RuntimeError):
    """The requested device is not on this host: the cell becomes a skipped row."""


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceAbsent(f"device cuda requested but torch {torch.__version__} sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda")
    return torch.device(device)


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


class IdentityWorkload:
    """nn.Identity on a [B, 8] tensor: what the harness costs per iteration."""

    steps_per_episode = 1
    batches_per_pass = 1

    def __init__(self, batch_size: int, device: str):
        self.batch_size = batch_size
        self.device = check_device(device)
        self.sync = sync_for(self.device)
        self.encode_times_s: list[float] = []

    def load(self) -> None:
        self.model = nn.Identity()

    def prepare(self) -> None:
        self.x = torch.zeros(self.batch_size, 8, device=self.device)

    def start_timing(self) -> None:
        self.encode_times_s.clear()

    def run_batch(self) -> None:
        if self.model(self.x).shape[0] != self.batch_size:
            raise BatchSizeError("identity changed the batch size")

    def info(self) -> dict:
        return {"observed_batch_size": self.batch_size, "distinct_episodes": self.batch_size}


class FakeEpisodeModel(nn.Module):
    """A tiny model with the real interface (encode/step): tests the harness without a
    trained model. `fault` makes it fail the ways real runs fail:
      cuda_oom / memory_error   raise torch.cuda.OutOfMemoryError / MemoryError in step
      wrong_batch               return one row fewer than it was given (a fixed batch)
      grow_mb:N                 keep N MB more per step (a leak; trips a RAM limit)
      hang                      sleep for an hour in step (a timeout)
      die                       the process kills itself with SIGKILL (the kernel OOM killer)"""

    def __init__(self, n_words: int = 32, n_actions: int = 12, hidden: int = 16, fault: str | None = None):
        super().__init__()
        self.emb = nn.Embedding(n_words, hidden)
        self.vis = nn.Linear(512, hidden)
        self.cell = nn.GRUCell(2 * hidden, hidden)
        self.act_emb = nn.Embedding(n_actions, hidden)
        self.go = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Linear(hidden, n_actions)
        self.mask = nn.Linear(hidden, 10 * 10)
        self.fault = fault
        self._kept: list[torch.Tensor] = []

    def encode(self, lang, lang_lengths):
        h = self.emb(lang).sum(1) / lang_lengths.unsqueeze(1)  # [B,H]
        return {"h": h, "t": 0}

    def step(self, state, frames_t, prev_action=None, *, with_mask=True):
        self._inject_fault()
        B = frames_t.shape[0]
        e = self.go.expand(B, -1) if prev_action is None else self.act_emb(prev_action)  # [B,H]
        vis = self.vis(frames_t.mean((2, 3)))  # [B,H]
        h = self.cell(torch.cat([vis, e], 1), state["h"])
        logits = self.head(h)  # [B,V]
        mask = step_masks(self._mask, h, logits, with_mask)
        if self.fault == "wrong_batch":
            logits, mask = logits[1:], mask[1:]
        return logits, mask, {"h": h, "t": state["t"] + 1}

    def _inject_fault(self):
        if self.fault == "cuda_oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if self.fault == "memory_error":
            raise MemoryError("simulated allocation failure")
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "die":
            os.kill(os.getpid(), 9)
        if self.fault and self.fault.startswith("grow_mb:"):
            self._kept.append(torch.ones(int(float(self.fault.split(":")[1]) * 1e6 / 4)))

    def _mask(self, h):  # [n,H] -> [n,1,300,300]
        return F.interpolate(self.mask(h).view(-1, 1, 10, 10), size=MASK_SHAPE[1:], mode="bilinear")


def fake_batches(batch_size: int, steps: int) -> list[dict]:
    """Random batches covering a pool (see batches_per_pass), in the form of store_batches."""
    mask_actions = torch.arange(12) % 2 == 1  # every other action of FakeEpisodeModel interacts
    batches = []
    for seed in range(batches_per_pass(batch_size)):
        gen = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 9, (batch_size,), generator=gen)
        actions = torch.randint(0, 12, (batch_size, steps), generator=gen)
        batches.append({
            "lang": torch.randint(1, 32, (batch_size, int(lengths.max())), generator=gen),
            "lang_lengths": lengths,
            "frames": torch.randn(batch_size, steps, *FRAME_SHAPE, generator=gen),
            "actions": actions,
            "valid_interact": mask_actions[actions],
            "distinct_episodes": batch_size,
            "mask_actions": mask_actions,
        })
    return batches


def store_batches(store_dir: str, batch_size: int, max_steps: int, features: str) -> list[dict]:
    """The pool of a split's store (its first annotations, cycling when it holds fewer) as
    batches of B, each collated as the loader does and cut to the same steps: min(max_steps,
    the shortest of the batches' longest episodes), so every iteration decodes as many steps.
    features="ram" reads the split's whole frame array into memory first, so that the result
    shows what memory mapping saves."""
    from alfred_edge.data import store
    from alfred_edge.data.loader import StoreDataset, collate
    from alfred_edge.data.vocab import interaction_actions, load_vocab

    pool = batch_size * batches_per_pass(batch_size)
    dataset = StoreDataset(store_dir, first=pool)  # the pool alone: RAM not bound to the store's size
    if len(dataset) == 0:
        raise ValueError(f"{store_dir}: the store holds no annotations")
    if features == "ram":
        dataset._frames = np.array(store.open_frames(Path(store_dir)))  # the whole split, in RAM
    elif features != "mmap":
        raise ValueError(f"features must be mmap or ram, got {features!r}")
    items = [dataset[i % len(dataset)] for i in range(pool)]
    collated = [collate(items[start:start + batch_size]) for start in range(0, pool, batch_size)]
    steps = min(max_steps, *(batch["frames"].shape[1] for batch in collated))
    mask_actions = torch.tensor(interaction_actions(load_vocab(_vocab_path(store_dir))))
    return [{
        "lang": batch["lang"],
        "lang_lengths": batch["lang_lengths"],
        "frames": batch["frames"][:, :steps].contiguous(),  # [B,steps,512,7,7]
        "actions": batch["actions"][:, :steps],  # [B,steps] the expert's
        "valid_interact": batch["valid_interact"][:, :steps],  # [B,steps] where the expert interacts
        "distinct_episodes": min(batch_size, len(dataset)),
        "mask_actions": mask_actions,
        "_dataset": dataset,  # keeps the "ram" copy alive for the run, as a deployment would
    } for batch in collated]


def _vocab_path(store_dir: str) -> Path:
    """The store's vocab.json, beside its split folders: it says which actions interact."""
    path = Path(store_dir).parent / "vocab.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vocabulary beside the store split {store_dir} (copy the pipeline's "
                                "data/store/vocab.json with the split: it says which actions need a mask)")
    return path


class EpisodeWorkload:
    """One iteration = the decoding of B whole episodes, the pool's next batch, in the mode
    `workload` ("expert" or "policy"; see the module docstring)."""

    def __init__(self, batch_size: int, device: str, load_model, make_batches, max_steps: int, workload: str):
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}; use one of {WORKLOADS}")
        self.batch_size = batch_size
        self.device = check_device(device)
        self.sync = sync_for(self.device)
        self._load_model = load_model
        self._make_batches = make_batches
        self.max_steps = max_steps
        self.workload = workload
        self.encode_times_s: list[float] = []
        self.observed_batch_size = None
        self.mask_rows = self.step_rows = self.mask_steps = self.steps = 0
        self.chosen_actions: list[int] = []
        self._batches_timed, self._counting = 0, True

    def load(self) -> None:
        self.model = self._load_model(self.device)
        self.model.eval()

    def prepare(self) -> None:
        batches = self._make_batches()
        self.distinct_episodes = batches[0]["distinct_episodes"]
        self._keep = batches[0].get("_dataset")
        self.choose_masks = chosen_interactions(batches[0]["mask_actions"].to(self.device))
        # (lang [B,L], lang_lengths [B], frames [B,T,512,7,7], actions [B,T], valid_interact [B,T]) of each batch
        self.inputs = [tuple(b[key].to(self.device) for key in ("lang", "lang_lengths", "frames", "actions",
                                                                  "valid_interact")) for b in batches]
        for lang, _, frames, _, _ in self.inputs:
            if lang.shape[0] != self.batch_size or frames.shape[0] != self.batch_size:
                raise BatchSizeError(f"asked for batch {self.batch_size}, the loader gave lang "
                                     f"{tuple(lang.shape)} and frames {tuple(frames.shape)}")
        self.steps_per_episode = min(self.max_steps, *(frames.shape[1] for _, _, frames, _, _ in self.inputs))
        self.batches_per_pass = len(self.inputs)
        self._next = 0

    def start_timing(self) -> None:
        """From here on, the timed loop, from the pool's first batch. The work counters (masks,
        steps, chosen actions) cover its first pass over the pool: the work is the pool's,
        equal for every variant, however many batches a variant's loop gets through."""
        self.encode_times_s.clear()
        self.mask_rows = self.step_rows = self.mask_steps = self.steps = 0
        self.chosen_actions = []
        self._next = self._batches_timed = 0

    @torch.inference_mode()
    def run_batch(self) -> None:
        lang, lang_lengths, frames, actions, interact = self.inputs[self._next]
        self._counting = self._batches_timed < self.batches_per_pass
        self._batches_timed += 1
        self._next = (self._next + 1) % self.batches_per_pass
        start = time.perf_counter()
        state = self.model.encode(lang, lang_lengths)
        self.sync()
        self.encode_times_s.append(time.perf_counter() - start)
        expert = self.workload == "expert"
        for t in range(self.steps_per_episode):
            if expert:  # step 0 starts from the model's learned `go` input
                prev_action, with_mask = (actions[:, t - 1] if t else None), (lambda _, rows=interact[:, t]: rows)
            else:  # the model's own previous action (state["last"]), as in ALFRED's eval
                prev_action, with_mask = None, self.choose_masks
            logits, mask, state = self.model.step(state, frames[:, t], prev_action, with_mask=with_mask)
            self._check(logits, mask, t)
            if not expert and self._counting:
                self.chosen_actions += logits.argmax(1).tolist()

    def _check(self, logits, mask, t: int) -> None:
        B = self.batch_size
        self.observed_batch_size = logits.shape[0]
        if (logits.dim() != 2 or logits.shape[0] != B or mask is None or tuple(mask.shape[1:]) != MASK_SHAPE
                or mask.shape[0] > B):
            raise BatchSizeError(f"step {t}: asked for batch {B}, the model returned action_logits "
                                 f"{tuple(logits.shape)} and mask_logits "
                                 f"{None if mask is None else tuple(mask.shape)} (expected [{B},V] and "
                                 f"[n,1,300,300], n <= {B} the rows that decode a mask)")
        if self._counting:
            self.mask_rows += mask.shape[0]
            self.step_rows += B
            self.mask_steps += mask.shape[0] > 0
            self.steps += 1

    def info(self) -> dict:
        info = {"observed_batch_size": self.observed_batch_size, "distinct_episodes": self.distinct_episodes,
                "workload": self.workload,
                "mask_fraction": self.mask_rows / self.step_rows if self.step_rows else None}
        if self.workload == "policy":
            info["chosen_actions"] = self.chosen_actions
        return info
