"""The terminal UI (`contextbot chat`): chat with the model while watching its hidden state.

One job per module:

- `app`: `ChatApp`, the layout, the keys, and the workers that run the model off the event loop;
- `streaming`: one turn as plain data (`run_turn` -> `Tick`s and a `TurnResult`), no Textual;
- `messages`: what the workers post to the app (the only way they reach the UI);
- `timeline`: the recent characters and turn boundaries the panel draws, as pure functions;
- `conversation`, `panel`, `status`, `history_input`, `help`: the widgets, each with its CSS;
- `transcript`: the JSON that ctrl+s saves.
"""
