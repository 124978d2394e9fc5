"""Analysis: measuring what a trained model remembers.

- `evaluate` and `report`: `contextbot eval`, accuracy by kind of conversation; `results`: the
  table of the shipped checkpoints (`make results`);
- `trace`, `units`, `probe` and `plots`: `contextbot inspect`, whose command is `inspector`.
"""
