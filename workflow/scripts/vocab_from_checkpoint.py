"""data/store/vocab.json from the ALFRED checkpoint models.lstm.init_from (rule vocab_from_checkpoint)."""
from alfred_edge import atomic
from alfred_edge.data.vocab import vocab_text
from alfred_edge.joblog import job_logging
from alfred_edge.models.alfred_checkpoint import read_checkpoint_vocab

with job_logging(snakemake) as log:
    vocab = read_checkpoint_vocab(snakemake.input[0])
    atomic.write_text(snakemake.output[0], vocab_text(vocab))
    log.info("vocabulary of %s, sizes: %s", snakemake.input[0], {kind: len(tokens) for kind, tokens in vocab.items()})
