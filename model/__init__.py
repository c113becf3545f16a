"""U^2-Net for human matting: the networks, building by name, and loading any weight file."""
from utils.constants import ARCHITECTURES

from .u2net import U2NET, U2NETP, build_model
from .weights import (CheckpointError, detect_arch, load_model, load_state_dict_any, load_weights, strip_prefixes,
                      unwrap)

__all__ = ["U2NET", "U2NETP", "ARCHITECTURES", "build_model", "CheckpointError", "detect_arch",
           "load_model", "load_state_dict_any", "load_weights", "strip_prefixes", "unwrap"]
