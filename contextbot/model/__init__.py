"""The network and its file: `network` (RecurrentLM, ModelConfig, the state helpers),
`checkpoint` (one safetensors file, never a pickle) and `recurrence` (the cell's equations, the
readable reference and the fast paths; its own docstring is the map)."""

from .network import CELLS, ModelConfig, RecurrentLM, State, detach_state, hidden_of, layer_norms, mask_state

__all__ = ["CELLS", "ModelConfig", "RecurrentLM", "State", "detach_state", "hidden_of", "layer_norms",
           "mask_state"]
