"""Training: `options` (the recipe), `batches` (conversations into truncated-BPTT batches),
`loop` (prepare, one step, fit), `metrics` (validation bits per character) and `distributed`
(the torchrun plumbing)."""
