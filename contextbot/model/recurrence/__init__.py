"""The recurrence: the cell's equations, once readably and several times fast. This is the map.

A cell (GRU, LSTM or vanilla RNN) is a handful of equations over one layer's weights, and the
weights are always `nn.GRU`'s (`nn.LSTM`'s, `nn.RNN`'s), held by `RecurrentLM.rnn`
(model/network.py). But no single implementation of the equations is fast everywhere the project
runs them: training on a CPU must reset the state in the middle of a chunk, chat feeds one token
at a time where a call costs more than its arithmetic, the evaluation talks hundreds of
conversations at once. So the same function is computed in several places, and each is held by a
test to PyTorch's module, which is held to the readable reference.

The reference
-------------
reference.py: `step` computes one token by hand from a layer's weights, with the cell's equations
written out in its docstring, and keeps every gate's activations (`StepTrace`, `gate_means`,
`saturation`). It is slow and meant to be read. It is also the only one that shows the gates, so
the UI's gate bars (`ChatSession.trace_last`) and `contextbot inspect`'s trace
(analysis/trace.py) use it; `GATE_NAMES` there names the gates as the UI shows them. How the
weights pack the gates (PyTorch's order: GRU rows r, z, n; LSTM rows i, f, g, o) is `GATE_ORDER`,
defined just below this docstring; every implementation slices by it.
Pinned by tests/model/test_reference.py (equal to nn.GRU / nn.LSTM / nn.RNN, step by step).

The fast implementations
------------------------
1. PyTorch's own kernel, `nn.GRU` / `nn.LSTM` / `nn.RNN`, called by `RecurrentLM._recur`: the
   plain `forward` (no `keep`, or resets only before a chunk's first token: whole-conversation
   batches, streams aligned to whole chunks, validation chunks with no reset inside them), and
   chat-sized calls through `RecurrentLM.forward_small` (oneDNN switched off). On a GPU this is
   cuDNN. It is the yardstick the other fast paths are tested against; test_reference.py ties it
   to the reference.
2. The layer-by-layer path in `RecurrentLM._recur`: training a stacked model with dropout off the
   CPU. cuDNN would draw the dropout between layers from a random state of its own, which no
   checkpoint can save, so `--resume` could not continue such a run exactly; instead each layer is
   one kernel call, with `F.dropout` between them drawing from PyTorch's generator.
   Pinned by tests/model/test_network.py:
   test_layer_by_layer_path_computes_what_the_stacked_kernel_does.
3. scan.py, `Scan` (called layer by layer by `RecurrentLM._scan`): training and validation on the
   CPU with conversations back to back in a stream, so the state resets mid-chunk wherever a
   conversation starts (`keep`). Its backward pass is written out by hand (backpropagation through
   time), and each step's element-wise work is a loop compiled with Numba, using kernels.py's σ and
   tanh. Pinned by tests/model/test_scan.py (against the module, forward and gradients; a reset
   mid-chunk is a fresh conversation; gradcheck).
4. `RecurrentLM._by_stretches`: resets mid-chunk on a GPU, where the scan cannot run (its loops
   are compiled for the CPU). PyTorch's kernel runs once per stretch between two steps where some
   stream starts afresh, zeroing those streams' state in between.
   Pinned by tests/model/test_scan.py:
   test_the_stretches_path_for_other_devices_computes_what_the_scan_computes.
5. stepper.py, `Stepper`: chat, one conversation at a time (`ChatSession`): the step written as
   plain loops over the module's weights and compiled with Numba (kernels.py's σ and tanh again),
   the first layer's input projection looked up in `RecurrentLM.input_table`; `Stepper.answer`
   runs a whole greedy turn (text/turns.py's protocol) in one compiled call.
   Pinned by tests/model/test_stepper.py (against the module; `answer` against `feed` and
   `step`), tests/test_chat.py (a turn's state) and tests/analysis/test_evaluate.py (chat against
   the batched path below).
6. The packed batched path, `RecurrentLM.forward_packed`: many sequences of different lengths in
   one kernel call over a packed sequence, each from and to its own column of the state. The
   evaluation's `BatchSession` (chat.py) feeds every conversation's prompt this way, then
   generates a token for all of them per `forward_small` call; the probe
   (analysis/probe.py, `turn_end_states`) feeds every conversation's turn.
   Pinned by tests/model/test_network.py (equal to feeding each sequence alone),
   tests/analysis/test_evaluate.py (BatchSession says what ChatSession says) and
   tests/analysis/test_inspect.py (the probe's batched states equal one conversation at a time).

kernels.py is not an implementation but the maths the two compiled ones share: σ and a
vectorisable tanh for Numba loops, and the compile options (tests/model/test_stepper.py checks
its tanh).

To change the cell, edit these files
------------------------------------
- this file: `GATE_ORDER`, if the cell packs other gates;
- reference.py: the equations (`step`) and `GATE_NAMES`;
- model/network.py: `CELLS`, which PyTorch module holds the weights, the chrono initialisation of
  the gate biases (`reset_parameters`), and the kernel `_recur` calls layer by layer;
- scan.py: the forward and backward kernels (`_gru_forward`, `_gru_backward`, ...) and `Scan`'s
  choice between them;
- stepper.py: the step in `_run`;
- kernels.py, if the cell needs another activation;
- the UI's gate display (ui/panel.py, analysis/inspector.py), which reads `GATE_NAMES`;
then run the tests above: each fast path must still equal the module, and the module the reference.
"""

#: How a layer's weights pack its gates: the rows of weight_ih, weight_hh, bias_ih and bias_hh are
#: one block of `hidden` rows per gate, in this order (PyTorch's). GRU: reset r, update z, new n.
#: LSTM: input i, forget f, cell g, output o. A vanilla RNN has one block, h' itself. Defined here
#: once: every implementation above slices by it (reference.py, scan.py and stepper.py in their
#: loops, network.py's chrono initialisation through `gate_rows`).
GATE_ORDER = {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)}


def gate_rows(cell: str, gate: str, hidden: int) -> slice:
    """The rows of `gate` (a letter of GATE_ORDER[cell]) in a layer's packed weights and biases."""
    k = GATE_ORDER[cell].index(gate)
    return slice(k * hidden, (k + 1) * hidden)
