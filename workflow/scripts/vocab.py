"""Build data/store/vocab.json from the training subset's traj_data.json files (rule vocab)."""
import json
from pathlib import Path

from tqdm import tqdm

from alfred_edge import atomic
from alfred_edge.data.preprocess import BadInput, read_traj
from alfred_edge.data.vocab import build_vocab, vocab_text
from alfred_edge.joblog import job_logging


def readable_trajectories(entries, root, on_bad_input, log):
    """Parsed training trajectories; bad ones are skipped here (preprocess lists them)."""
    skipped = 0
    for entry in tqdm(entries, desc="vocab", unit="traj"):
        try:
            yield read_traj(root / "train" / entry["task"] / "traj_data.json")
        except BadInput:
            if on_bad_input == "fail":
                raise
            skipped += 1
    if skipped:
        log.warning("%d unreadable training trajectories left out (see data/store/train/rejected.parquet)", skipped)


with job_logging(snakemake) as log:
    subset = json.loads(Path(snakemake.input.subset).read_text())
    vocab = build_vocab(readable_trajectories(subset["trajectories"], Path(snakemake.params.root),
                                              snakemake.params.on_bad_input, log))
    atomic.write_text(snakemake.output[0], vocab_text(vocab))
    log.info("vocabulary sizes: %s", {kind: len(tokens) for kind, tokens in vocab.items()})
