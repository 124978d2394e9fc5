"""The hand-computed gates (contextbot.model.recurrence.reference) against PyTorch's own
nn.GRU / nn.LSTM / nn.RNN.

The UI shows gate values that `gates.step` computes from the layer weights. They are only worth
showing if that computation is the network's: so we recompute h_t (and c_t) character by
character and require it to match the fused module to 1e-5, for every cell, with several layers,
starting from a non-zero state.
"""

import pytest
import torch

from contextbot.model.recurrence import GATE_ORDER, gate_rows
from contextbot.model.recurrence import reference as gates

from ..conftest import build, random_state


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_step_matches_the_module(cell, layers):
    model = build(cell, layers)
    tokens = torch.randint(0, 23, (1, 12), generator=torch.Generator().manual_seed(2))
    state_module = random_state(model)
    state_hand = state_module
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state_module = model(tokens[:, t:t + 1], state_module)
            trace = gates.step(model, int(tokens[0, t]), state_hand)
            state_hand = trace.state
            if cell == "lstm":
                torch.testing.assert_close(state_hand[0], state_module[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(state_hand[1], state_module[1], atol=1e-5, rtol=1e-5)
            else:
                torch.testing.assert_close(state_hand, state_module, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(trace.logits, logits[0, -1], atol=1e-5, rtol=1e-5)
            # The per-layer h in the trace is the same state, layer by layer.
            h = state_module[0] if cell == "lstm" else state_module
            for layer in range(layers):
                torch.testing.assert_close(trace.hidden[layer], h[layer, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_step_from_no_state_is_the_zero_state(cell):
    model = build(cell, 2)
    a = gates.step(model, 5, None)
    b = gates.step(model, 5, model.zero_state(1))
    torch.testing.assert_close(a.logits, b.logits)


@pytest.mark.parametrize("cell,names", [("gru", ("update", "reset")),
                                        ("lstm", ("input", "forget", "output")), ("rnn", ())])
def test_gate_means_per_layer(cell, names):
    model = build(cell, 2)
    trace = gates.step(model, 3, random_state(model))
    means = gates.gate_means(trace)
    assert len(means) == 2
    for layer, m in enumerate(means):
        assert tuple(m) == names
        for name, value in m.items():
            assert 0.0 < value < 1.0  # a sigmoid, averaged
            assert value == pytest.approx(float(trace.gates[layer][name].mean()))


def test_gru_update_gate_keeps_the_state():
    """With the update gate forced to 1 (huge bias), h' = h: the memory is copied unchanged."""
    model = build("gru", 1)
    h = model.config.hidden
    with torch.no_grad():
        model.rnn.bias_ih_l0[gate_rows("gru", "z", h)] = 50.0  # z: the update gate
    state = random_state(model)
    trace = gates.step(model, 4, state)
    assert float(trace.gates[0]["update"].min()) > 0.999
    torch.testing.assert_close(trace.state, state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gate_order_is_how_pytorch_packs_the_gates(cell):
    """GATE_ORDER names the blocks of rows as PyTorch's own module reads them: open the gate that
    keeps the memory (GRU z; LSTM f, with i shut) through the rows `gate_rows` gives, and the
    module itself copies its memory unchanged."""
    model = build(cell, 1)
    h = model.config.hidden
    with torch.no_grad():
        model.rnn.bias_ih_l0[gate_rows(cell, "z" if cell == "gru" else "f", h)] = 50.0
        if cell == "lstm":
            model.rnn.bias_ih_l0[gate_rows(cell, "i", h)] = -50.0
        state = random_state(model)
        _, new = model(torch.tensor([[4]]), state)
    memory = (lambda s: s[1]) if cell == "lstm" else (lambda s: s)
    torch.testing.assert_close(memory(new), memory(state), atol=1e-5, rtol=0)
    assert len(model.rnn.bias_ih_l0) == len(GATE_ORDER[cell]) * h
