"""Training: `options` (the recipe, and the `contextbot train` flags made from it), `batches`
(conversations into truncated-BPTT batches), `loop` (prepare, one step, fit), `resume` (what a
checkpoint holds so that --resume continues exactly), `metrics` (validation bits per character)
and `distributed` (the torchrun plumbing)."""
