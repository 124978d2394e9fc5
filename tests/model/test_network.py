import math

import pytest
import torch
import torch.nn.functional as F

from contextbot.model.network import ModelConfig, RecurrentLM, detach_state, mask_state
from contextbot.text.turns import turn

from ..conftest import build, make_model


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes(tiny_tokenizer, cell, layers):
    m = make_model(tiny_tokenizer, cell, hidden=12, layers=layers)
    logits, state = m(torch.zeros(3, 7, dtype=torch.long))
    assert logits.shape == (3, 7, tiny_tokenizer.vocab_size)
    hs = state if cell != "lstm" else state[0]
    assert hs.shape == (layers, 3, 12)
    if cell == "lstm":
        assert state[1].shape == (layers, 3, 12)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_feeding_ab_at_once_equals_a_then_b(tiny_tokenizer, cell):
    m = make_model(tiny_tokenizer, cell, layers=2)
    ab = torch.tensor([tiny_tokenizer.encode("ab")])
    both, s_both = m(ab)
    first, s1 = m(ab[:, :1])
    second, s2 = m(ab[:, 1:], s1)
    torch.testing.assert_close(torch.cat([first, second], 1), both)
    torch.testing.assert_close(s2, s_both)


def test_model_holds_no_state(tiny_tokenizer):
    m = make_model(tiny_tokenizer)
    x = torch.tensor([tiny_tokenizer.encode("Who is")])
    a, _ = m(x)
    m(torch.tensor([tiny_tokenizer.encode("something else")]))
    b, _ = m(x)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_tiny_model_overfits_one_batch(tiny_tokenizer, cell):
    torch.manual_seed(0)
    m = RecurrentLM(ModelConfig(vocab_size=tiny_tokenizer.vocab_size, cell=cell, embed=16, hidden=64))
    ids = torch.tensor([tiny_tokenizer.encode(turn("Who is Tom Cruise?", "He is an American actor."))])
    x, y = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The first loss is about ln(vocab): the model starts knowing nothing.
    assert abs(first - math.log(tiny_tokenizer.vocab_size)) < 1.0
    assert loss.item() < 0.05


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_detached_state_has_no_history(tiny_tokenizer, cell):
    m = make_model(tiny_tokenizer, cell).train()
    _, state = m(torch.zeros(2, 5, dtype=torch.long))
    flat = state if isinstance(state, tuple) else (state,)
    assert all(s.grad_fn is not None for s in flat)
    d = detach_state(state)
    flat = d if isinstance(d, tuple) else (d,)
    assert all(s.grad_fn is None and not s.requires_grad for s in flat)


def test_mask_state_zeroes_only_the_new_conversations(tiny_tokenizer):
    m = make_model(tiny_tokenizer, "lstm")
    _, state = m(torch.ones(3, 4, dtype=torch.long))
    h, c = mask_state(state, torch.tensor([1.0, 0.0, 1.0]))
    assert torch.all(h[:, 1] == 0) and torch.all(c[:, 1] == 0)
    torch.testing.assert_close(h[:, 0], state[0][:, 0])


def test_chrono_initialisation_sets_memory_time_biases(tiny_tokenizer):
    torch.manual_seed(0)
    m = RecurrentLM(ModelConfig(vocab_size=tiny_tokenizer.vocab_size, cell="gru", hidden=400,
                                chrono_tmax=400, chrono_fraction=1.0, chrono_spread="log"))
    z_bias = m.rnn.bias_ih_l0[400:800] + m.rnn.bias_hh_l0[400:800]
    assert z_bias.min() >= 0 and z_bias.max() <= math.log(399) + 1e-5
    # log-spread: memory times T = 1 + e^b cover every octave about equally.
    octaves = torch.histc(z_bias / math.log(2), bins=8, min=0, max=math.log2(399))
    assert octaves.min() > 25

    m = RecurrentLM(ModelConfig(vocab_size=tiny_tokenizer.vocab_size, cell="lstm", hidden=100,
                                chrono_tmax=400, chrono_fraction=0.5, chrono_spread="uniform"))
    f_bias = m.rnn.bias_ih_l0[100:200] + m.rnn.bias_hh_l0[100:200]
    i_bias = m.rnn.bias_ih_l0[0:100] + m.rnn.bias_hh_l0[0:100]
    assert f_bias[:50].mean() > 3  # the paper's spread: most units remember for > 20 steps
    torch.testing.assert_close(i_bias[:50], -f_bias[:50])  # input gate = -forget gate
    assert torch.all(f_bias[50:] == 0)  # the rest keep a near-zero bias and start fast


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_layer_by_layer_path_computes_what_the_stacked_kernel_does(cell, monkeypatch):
    """Training a stacked model with dropout on a GPU runs the layers one call each, so that the
    dropout between them comes from PyTorch's generator (which --resume restores) and not from
    cuDNN's. Forced here on the CPU, with the dropout itself switched off: same outputs, same
    state, and gradients still reach every layer."""
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(vocab_size=11, cell=cell, embed=6, hidden=8, layers=3, dropout=0.4))
    model.train()
    monkeypatch.setattr(model, "_drops_between_layers", lambda x: True)
    between = []  # dropout's inputs: one per gap between layers, none before or after them
    monkeypatch.setattr(model, "rnn_dropout", lambda x: between.append(x.shape) or x)
    model.rnn.dropout = 0.0
    x = torch.randn(2, 5, 6)
    h = torch.randn(3, 2, 8)
    state = (h, torch.randn(3, 2, 8)) if cell == "lstm" else h
    out, new = model._recur(x, state)
    ref_out, ref_new = model.rnn(x, state)
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(new if cell == "lstm" else (new,), ref_new if cell == "lstm" else (ref_new,)):
        torch.testing.assert_close(a, b)
    assert between == [(2, 5, 8)] * 2
    out.sum().backward()
    assert all(getattr(model.rnn, f"weight_hh_l{k}").grad.abs().sum() > 0 for k in range(3))



def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_packed_sequences_equal_feeding_each_alone(cell, layers):
    """`forward_packed` (the evaluation's batched talk, the probe): sequences of different lengths
    at once, each from its own column of the state, give each one's last logits and state as if
    it had been fed alone; one call, however the lengths are ordered."""
    model = build(cell, layers)
    g = torch.Generator().manual_seed(2)
    lengths = [5, 1, 9, 3, 9]
    sequences = [torch.randint(0, 23, (n,), generator=g) for n in lengths]
    c = model.config
    h = torch.randn(c.layers, len(lengths), c.hidden, generator=g) * 0.5
    state = (h, torch.randn(c.layers, len(lengths), c.hidden, generator=g) * 0.5) if cell == "lstm" else h
    with torch.no_grad():
        logits, new = model.forward_packed(sequences, state)
        assert logits.shape == (len(lengths), c.vocab_size)
        for b, seq in enumerate(sequences):
            alone = tuple(s[:, b:b + 1] for s in as_tuple(state))
            want, want_state = model(seq[None], alone if cell == "lstm" else alone[0])
            torch.testing.assert_close(logits[b], want[0, -1], atol=1e-6, rtol=1e-5)
            for got, ref in zip(as_tuple(new), as_tuple(want_state)):
                torch.testing.assert_close(got[:, b:b + 1], ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_small_call_is_forward_and_leaves_onednn_as_it_was(cell):
    """`forward_small` switches oneDNN off for its call only: the same results as `forward`."""
    model = build(cell, 2)
    tokens = torch.tensor([[3], [7]])
    state = model.zero_state(2)
    before = torch._C._get_mkldnn_enabled()
    with torch.no_grad():
        got, got_state = model.forward_small(tokens, state)
        want, want_state = model(tokens, state)
    assert torch._C._get_mkldnn_enabled() == before
    torch.testing.assert_close(got, want)
    for a, b in zip(as_tuple(got_state), as_tuple(want_state)):
        torch.testing.assert_close(a, b)
