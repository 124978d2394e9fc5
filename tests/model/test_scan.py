"""Training's hand-written recurrence (contextbot/model/recurrence/scan.py) against PyTorch's own kernels, and the
back-to-back streams it makes possible (contextbot/train/batches.py)."""

import pytest
import torch

from contextbot.text.corpus import Conversation
from contextbot.train.batches import BatchSchedule, Streams, encode_conversation
from contextbot.model.network import ModelConfig, RecurrentLM


def double_model(cell: str, layers: int, vocab: int = 11, seed: int = 0) -> RecurrentLM:
    torch.manual_seed(seed)
    m = RecurrentLM(ModelConfig(vocab_size=vocab, cell=cell, embed=5, hidden=7, layers=layers)).double()
    with torch.no_grad():  # biases away from zero, so that a wrong gate packing shows
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def random_state(m: RecurrentLM, batch: int):
    """A nonzero initial state that asks for its gradient (h0, and c0 for an LSTM, are checked too)."""
    h = torch.randn(m.config.layers, batch, m.config.hidden, dtype=torch.double, requires_grad=True)
    return (h, torch.randn_like(h).requires_grad_()) if m.config.cell == "lstm" else h


def leaves(m: RecurrentLM, state) -> list[torch.Tensor]:
    """Every parameter, then the initial state's tensors."""
    return list(m.parameters()) + (list(state) if isinstance(state, tuple) else [state])


def names(m: RecurrentLM, state) -> list[str]:
    return [n for n, _ in m.named_parameters()] + (["h0", "c0"] if isinstance(state, tuple) else ["h0"])


def flat(state):
    return torch.cat([s.flatten() for s in state]) if isinstance(state, tuple) else state.flatten()


def loss_of(logits, state, weights):
    """Uses every output and the final state, so every gradient path is checked."""
    return (logits * weights).sum() + flat(state).pow(2).sum()


def assert_same(m: RecurrentLM, s0, w, got, want) -> None:
    """Two forward results (logits, state) agree, and so do the gradients of every parameter
    and of the initial state, to float64 rounding."""
    grads = torch.autograd.grad(loss_of(*got, w), leaves(m, s0))
    ref_grads = torch.autograd.grad(loss_of(*want, w), leaves(m, s0))
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(flat(got[1]), flat(want[1]), rtol=0, atol=1e-12)
    for name, g, ref in zip(names(m, s0), grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=0, atol=1e-11, msg=f"gradient of {name}")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_scan_computes_what_the_pytorch_module_computes(cell, layers):
    """With nothing to reset, the scan is nn.RNN / nn.GRU / nn.LSTM: outputs, final state and the
    gradient of every parameter, to float64 rounding."""
    m = double_model(cell, layers)
    x = torch.randint(0, 11, (3, 9))
    s0 = random_state(m, 3)
    w = torch.randn(3, 9, 11, dtype=torch.double)

    assert_same(m, s0, w, m(x, s0, keep=torch.ones(3, 9)), m(x, s0))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_reset_mid_chunk_is_a_fresh_conversation(cell):
    """keep = 0 at step 4 of stream 1: that stream's steps 4.. are computed from the zero state,
    and its earlier steps get no gradient from the later ones. Stream 0 runs straight through."""
    m = double_model(cell, layers=2)
    x = torch.randint(0, 11, (2, 9))
    s0 = random_state(m, 2)
    w = torch.randn(2, 9, 11, dtype=torch.double)
    keep = torch.ones(2, 9)
    keep[1, 4] = 0

    scanned = m(x, s0, keep=keep)

    # The same thing, piece by piece through nn.GRU & co.
    def stream(b, s):
        return tuple(t[:, b:b + 1] for t in s) if isinstance(s, tuple) else s[:, b:b + 1]

    straight, s_straight = m(x[:1], stream(0, s0))
    head, _ = m(x[1:, :4], stream(1, s0))
    tail, s_tail = m(x[1:, 4:], None)  # None: the zero state
    ref_logits = torch.cat([straight, torch.cat([head, tail], 1)])
    cat = (lambda a, b: tuple(torch.cat([u, v], 1) for u, v in zip(a, b))) if cell == "lstm" \
        else (lambda a, b: torch.cat([a, b], 1))
    assert_same(m, s0, w, scanned, (ref_logits, cat(s_straight, s_tail)))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scan_passes_gradcheck_with_resets_anywhere(cell):
    """Finite differences against the hand-written backward, for every input of Scan itself:
    a reset at the first step, in the middle and at the last step, and a one-step chunk."""
    from contextbot.model.recurrence.scan import GATES, Scan
    torch.manual_seed(1)
    hid, batch = 3, 2
    for seq, resets in ((6, [(0, 0), (2, 1), (5, 1)]), (1, [(0, 1)])):
        keep = torch.ones(seq, batch, dtype=torch.double)
        for t, b in resets:
            keep[t, b] = 0
        args = [torch.randn(GATES[cell] * hid, seq, batch, dtype=torch.double),
                torch.randn(batch, hid, dtype=torch.double),
                torch.randn(batch, hid, dtype=torch.double) if cell == "lstm" else None,
                torch.randn(GATES[cell] * hid, hid, dtype=torch.double),
                torch.randn(GATES[cell] * hid, dtype=torch.double)]
        for a in args:
            if a is not None:
                a.requires_grad_()

        def f(gi, h0, c0, w_hh, b_hh):
            out, last_c = Scan.apply(cell, gi, h0, c0, w_hh, b_hh, keep)
            return (out, last_c) if cell == "lstm" else out

        assert torch.autograd.gradcheck(f, args)


def test_the_initial_state_gets_its_gradient_unless_reset_at_once():
    m = double_model("gru", layers=1)
    x = torch.randint(0, 11, (2, 5))
    h0 = torch.randn(1, 2, 7, dtype=torch.double, requires_grad=True)
    keep = torch.ones(2, 5)
    keep[1, 0] = 0  # stream 1 starts a conversation at its first token
    logits, _ = m(x, h0, keep=keep)
    (g,) = torch.autograd.grad(logits.sum(), [h0])
    assert g[0, 0].abs().sum() > 0 and torch.all(g[0, 1] == 0)


def test_dropout_between_layers_trains_through_the_scan():
    """Two layers with dropout, in training mode: the scan's own path for that (no table
    lookup). Not comparable to nn.GRU's random masks, so: finite gradients that reach every
    parameter, and eval mode (no dropout) equal to the module again."""
    torch.manual_seed(0)
    m = RecurrentLM(ModelConfig(vocab_size=11, cell="gru", embed=5, hidden=7, layers=2, dropout=0.5)).double()
    x = torch.randint(0, 11, (3, 8))
    logits, _ = m.train()(x, None, keep=torch.ones(3, 8))
    grads = torch.autograd.grad(logits.square().sum(), list(m.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    m.eval()
    torch.testing.assert_close(m(x, None, keep=torch.ones(3, 8))[0], m(x)[0], rtol=0, atol=1e-12)


def test_streams_hold_conversations_back_to_back(tiny_tokenizer):
    """No padding between conversations: each one's tokens follow the last one's, keep is 0
    exactly at each conversation's first token, and only a stream's end is padded."""
    convs = [Conversation([(f"Who is {n}?", "I don't know who that is.")] * k)
             for n, k in (("Tom", 1), ("Megan", 3), ("Zorb", 2), ("Ada", 1), ("Yusuf", 2))]
    enc = [encode_conversation(c, tiny_tokenizer, 3.0) for c in convs]
    st = Streams(enc, batch=2, seq_len=16, seed=0, epoch=0)
    chunks = [st.chunk(c) for c in range(st.num_chunks)]
    inputs = torch.cat([b.inputs for b in chunks], 1)
    keep = torch.cat([b.keep for b in chunks], 1)
    weights = torch.cat([b.weights for b in chunks], 1)
    seen, lengths = [], []
    for s in range(2):
        real = int((weights[s] > 0).sum())  # every real target has a weight, padding none
        starts = (keep[s] == 0).nonzero().flatten().tolist()
        ends = starts[1:] if real < inputs.shape[1] else starts[1:] + [real]
        assert starts[0] == 0 and ends[-1] == real  # the last one ends where the padding starts
        for a, b in zip(starts, ends):  # each conversation ends where the next starts
            e = next(e for e in enc if len(e.inputs) == b - a and torch.equal(inputs[s, a:b], e.inputs.long()))
            seen.append(id(e))
        assert torch.all(weights[s, real:] == 0)  # padding only at the end
        lengths.append(real)
    assert sorted(seen) == sorted(map(id, enc))  # every conversation, once
    # Padding is only what the longest stream is short of a whole chunk.
    assert st.num_chunks == -(-max(lengths) // 16) and sum(lengths) == sum(len(e.inputs) for e in enc)


def test_schedule_keeps_the_state_across_chunks_within_a_conversation(tiny_tokenizer):
    conv = Conversation([("Who is Tom Cruise?", "He is an American actor.")] * 4)
    e = encode_conversation(conv, tiny_tokenizer, 3.0)
    sched = BatchSchedule([e], batch=1, seq_len=16, seed=0)
    assert sched.get(0).keep[0, 0] == 0  # the conversation starts the first chunk
    assert torch.all(sched.get(1).keep == 1)  # the second carries the first one's state on


def test_resets_at_the_first_token_only_take_pytorchs_kernel_with_the_same_result():
    """Whole conversations, or streams aligned to chunks (training on a GPU): every reset is
    before the first token, so nn.GRU (cuDNN on a GPU) serves. Same function as the scan."""
    m = double_model("gru", layers=2)
    x = torch.randint(0, 11, (3, 6))
    s0 = random_state(m, 3)
    keep = torch.ones(3, 6)
    keep[1, 0] = 0
    w = torch.randn(3, 6, 11, dtype=torch.double)
    out, state = m._scan(x, s0, keep)  # the scan, forced
    assert_same(m, s0, w, m(x, s0, keep=keep), (m.head(out), state))
    ref_state = s0 * keep[:, 0].view(1, -1, 1).double()
    torch.testing.assert_close(m(x, s0, keep=keep)[0], m(x, ref_state)[0], rtol=0, atol=0)


def test_aligned_streams_start_every_conversation_at_a_chunk(tiny_tokenizer):
    convs = [Conversation([(f"Who is {n}?", "I don't know who that is.")] * k)
             for n, k in (("Tom", 1), ("Megan", 3), ("Zorb", 2))]
    enc = [encode_conversation(c, tiny_tokenizer, 3.0) for c in convs]
    st = Streams(enc, batch=2, seq_len=16, seed=0, epoch=0, align=True)
    keep = torch.cat([st.chunk(c).keep for c in range(st.num_chunks)], 1)
    starts = (keep == 0).nonzero()
    assert len(starts) >= len(enc) and torch.all(starts[:, 1] % 16 == 0)
    assert all(st.chunk(c).keep[:, 1:].all() for c in range(st.num_chunks))


@pytest.mark.parametrize("cell, device, aligned", [("gru", "cpu", False), ("rnn", "cpu", False),
                                                    ("lstm", "cpu", True), ("gru", "cuda", True)])
def test_training_aligns_streams_only_where_a_fused_kernel_wins(tiny_tokenizer, cell, device, aligned):
    from contextbot.train.loop import TrainOptions, batch_schedule
    e = encode_conversation(Conversation([("Who is Tom Cruise?", "He is an American actor.")] * 3),
                            tiny_tokenizer, 3.0)
    sched = batch_schedule([e, e, e], TrainOptions(cell=cell, batch=2, seq_len=16), torch.device(device))
    mid_chunk_reset = False
    step = 0
    while sched.get(step) is not None and sched.epoch == 0:
        mid_chunk_reset |= not bool(sched.get(step).keep[:, 1:].all())
        step += 1
    assert mid_chunk_reset != aligned  # back to back, a conversation starts mid-chunk


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_stretches_path_for_other_devices_computes_what_the_scan_computes(cell):
    """Off the CPU, resets mid-chunk go through PyTorch's kernel once per stretch between resets
    (no GPU here, so it is called directly): the same outputs, state and gradients as the scan."""
    m = double_model(cell, layers=2)
    x = torch.randint(0, 11, (3, 10))
    s0 = random_state(m, 3)
    w = torch.randn(3, 10, 11, dtype=torch.double)
    keep = torch.ones(3, 10)
    keep[0, 0] = keep[1, 3] = keep[2, 3] = keep[0, 7] = keep[2, 9] = 0
    out, state = m._by_stretches(x, s0, keep)
    assert_same(m, s0, w, (m.head(out), state), m(x, s0, keep=keep))
