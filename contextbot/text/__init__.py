"""Text: everything contextbot knows about its words before any network is involved.

- `turns`: the turn format (`Q: ...` / `A: ...`), written once for everyone;
- `tokenizer`: text <-> token ids (sentencepiece, exact round trip);
- `facts`: the people of facts.json and the sentences that state their facts;
- `dialogue`: generated conversations about them, with their right answers;
- `corpus`: building and reading corpus files;
- `referents`: who "he" and "she" mean at each point of a conversation (training's labels);
- `terminal`: text between a terminal and the model, made safe in both directions.

Nothing in this package imports PyTorch (a test checks), so `contextbot corpus` starts quickly.
"""
