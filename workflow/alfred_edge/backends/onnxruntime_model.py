"""A model exported to ONNX (alfred_edge.backends.onnx_export) run by ONNX Runtime behind the
eager models' interface (workflow/README.md), so that evaluation and the benchmark drive it
as they drive an eager model:

    model = OnnxRuntimeModel(folder, header, provider="cpu", threads=2)
    state = model.encode(lang, lang_lengths)
    action_logits, mask_logits, state = model.step(state, frames_t, prev_action, with_mask=...)
    out = model(batch, teacher_forcing=True)          # whole sequences, step by step (evaluation)

Inputs and outputs are torch tensors on the CPU, as the eager models' on the CPU; the
sessions see them as numpy arrays without a copy. `onnxruntime` is imported here only, when
a model is loaded: the benchmark's measuring side needs it only for this backend.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from alfred_edge.backends.graphs import GRAPHS
from alfred_edge.backends.onnx_export import GRAPH_NAMES
from alfred_edge.models.common import (
    check_batch,
    check_encode_inputs,
    check_step_inputs,
    gather_steps,
    next_input_actions,
    step_masks,
)
from alfred_edge.variants import VariantUnavailable

# The providers a benchmark device maps to, most preferred first.
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider",),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
}


def import_onnxruntime(variant: str):
    try:
        import onnxruntime
    except ImportError as exc:
        raise VariantUnavailable(variant, f"the onnxruntime backend needs the onnxruntime package ({exc}); "
                                 "pip install onnxruntime (or onnxruntime-gpu for CUDA/TensorRT)") from exc
    return onnxruntime


def providers_for(provider: str, variant: str) -> list[str]:
    """ONNX Runtime's execution providers for `provider` (cpu, cuda, tensorrt); a
    VariantUnavailable naming what this installation has where one is missing."""
    ort = import_onnxruntime(variant)
    if provider not in PROVIDERS:
        raise VariantUnavailable(variant, f"unknown ONNX Runtime provider {provider!r}; known: {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise VariantUnavailable(variant, f"ONNX Runtime {ort.__version__} here has no {wanted[0]} "
                                 f"(available: {', '.join(available)}); it comes with onnxruntime-gpu "
                                 "(NVIDIA's build on a Jetson)")
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"] * (provider != "cpu")


def session_options(ort, threads: int):
    """Options of the model's three sessions: `threads` intra-op threads each, and their
    workers stop spinning when a run returns. Each session has a pool of its own, whose
    workers otherwise spin on after each run, taking the cores from the next session's run:
    a decode alternates encode, step and mask runs, and on the development machine's 2 cores
    its steps took twice as long (benchmarks/ort_spinning.py). Spinning within a run, between
    its operators, is kept."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxRuntimeModel:
    """The three graphs of folder/ as one model. `header`: the fp32 model file's header
    (model, config, vocab_sizes, vocab_digest), which names the graphs' tensors."""

    backend = "onnxruntime"

    def __init__(self, folder: str | Path, header: dict, provider: str = "cpu", threads: int | None = None,
                 variant: str = "fp32"):
        ort = import_onnxruntime(variant)
        self.name = header["model"]
        self.config = dict(header["config"])
        self.vocab_sizes = dict(header["vocab_sizes"])
        self.vocab_digest = header["vocab_digest"]
        self.provider = provider
        self.graphs = GRAPHS[self.name]
        options = session_options(ort, threads or torch.get_num_threads())
        providers = providers_for(provider, variant)
        self.folder = Path(folder)
        self.sessions = {name: ort.InferenceSession(str(self.folder / f"{name}.onnx"), options, providers=providers)
                         for name in GRAPH_NAMES}  # fmt: skip
        self.inputs = {name: [i.name for i in s.get_inputs()] for name, s in self.sessions.items()}
        self._recorded = None
        self.outputs = {name: [o.name for o in s.get_outputs()] for name, s in self.sessions.items()}

    # --- the eager models' interface ------------------------------------------------------
    def eval(self):
        return self

    def encode(self, lang, lang_lengths):
        """lang [B,L] long, lang_lengths [B] -> episode state."""
        batch = check_encode_inputs(lang, lang_lengths)
        longest = int(lang_lengths.max())  # the eager encoder's output length
        outputs = self._run("encode", {"lang": lang[:, :longest], "lang_lengths": lang_lengths})
        tensors = {**self.graphs.empty_state(self.config, batch), **outputs}
        return {"batch": batch, "t": 0, "last": None, "tensors": tensors}

    def step(self, state, frames_t, prev_action=None, *, with_mask=True):
        """One decoder step (see the eager models' step): -> (action_logits [B,V], mask_logits
        (models.common.step_masks), state)."""
        check_step_inputs(state, frames_t, prev_action)
        cont_t, action_t, state = self._step(state, frames_t, prev_action)
        return action_t, step_masks(self._mask, cont_t, action_t, with_mask), state

    def forward(self, batch, teacher_forcing=None, mask_steps=None):
        """Whole sequences, step by step as the eager lstm decodes them (teacher forcing by
        default: the gold previous action): -> action_logits [B,T,V], mask_logits [N,1,P,P]
        at mask_steps (default: valid_interact)."""
        check_batch(batch)
        actions = batch["actions"]
        mask_steps = batch["valid_interact"] if mask_steps is None else mask_steps
        forced = teacher_forcing is not False
        state = self.encode(batch["lang"], batch["lang_lengths"])
        logits, conts = [], []
        for t in range(actions.shape[1]):
            prev = actions[:, t - 1] if (forced and t > 0) else None
            cont_t, action_t, state = self._step(state, batch["frames"][:, t], prev)
            logits.append(action_t)
            conts.append(cont_t)
        masks = self._mask(gather_steps(torch.stack(conts, 1), mask_steps))
        return {"action_logits": torch.stack(logits, 1), "mask_logits": masks}

    __call__ = forward

    def graph_weight_bytes(self) -> tuple[float, float]:
        """(bytes a step reads without a mask, bytes of the mask decoder): the step and mask
        graphs' files, which hold their weights (initializers) and little else."""
        return tuple(float((self.folder / f"{name}.onnx").stat().st_size) for name in ("step", "mask"))

    # --- sessions --------------------------------------------------------------------------
    def _step(self, state, frames_t, prev_action):
        if self.name == "transformer" and state["t"] + 1 > self.config["max_positions"]:
            raise ValueError(f"{state['t'] + 1} decoder steps exceed the transformer's max_positions = "
                             f"{self.config['max_positions']}")
        actions = next_input_actions(state, prev_action)
        first = actions is None
        feeds = {**state["tensors"], "frames": frames_t.float(),
                 "prev_action": torch.zeros(state["batch"], dtype=torch.long) if first else actions,
                 "first": torch.tensor(first)}  # fmt: skip
        outputs = self._run("step", feeds)
        action_t, cont_t = outputs.pop("action_logits"), outputs.pop("cont")
        tensors = {**state["tensors"], **{name.removesuffix("_next"): value for name, value in outputs.items()}}
        return cont_t, action_t, dict(state, t=state["t"] + 1, tensors=tensors, last=action_t.argmax(1))

    def _mask(self, cont):
        return self._run("mask", {"cont": cont})["mask_logits"]

    def _run(self, graph: str, feeds: dict) -> dict:
        """Run one session on torch tensors (CPU) -> its outputs as torch tensors, by name."""
        arrays = {name: _array(feeds[name]) for name in self.inputs[graph]}
        if self._recorded is not None:
            self._recorded[graph].append({name: array.copy() for name, array in arrays.items()})
        results = self.sessions[graph].run(self.outputs[graph], arrays)
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs[graph], results)}

    @contextmanager
    def recording(self):
        """Inside the block, every session's inputs are kept: {graph: [feeds]} (what a static
        quantizer calibrates on)."""
        self._recorded = {name: [] for name in GRAPH_NAMES}
        try:
            yield self._recorded
        finally:
            self._recorded = None


def _array(tensor):
    return tensor.detach().cpu().contiguous().numpy()
