"""The data stage: json_feat tree (real or synthetic) -> manifest -> subset -> memory-mapped store."""
