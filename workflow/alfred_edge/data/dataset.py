"""What ALFRED's json_feat dataset fixes for every stage (pure Python: the workflow imports it
when it parses): the names of its splits and the shape of a frame's features."""
from __future__ import annotations

SPLITS = ("train", "valid_seen", "valid_unseen")
VALID_SPLITS = ("valid_seen", "valid_unseen")  # what training validates on and variants are evaluated on
FRAME_SHAPE = (512, 7, 7)  # ResNet-18's layer4 output per frame, as feat_conv.pt holds it
