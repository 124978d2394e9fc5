"""Linear probes: can a straight line through state space read whom "he" or "she" means?

A *probe* is a deliberately weak classifier trained to read one property out of frozen hidden
states (Alain and Bengio, 2016). Ours is multinomial logistic regression, one weight vector per
class, p(class | h) = softmax(W h + b), fitted on the states of some generated conversations and
tested on the states of others. If it reads the property in conversations it never saw, the
state holds that property in a form one linear layer can use (and the model's own output layer is
exactly one linear layer). If it falls to chance, the information is gone, or at least no longer
linearly readable. The probe must stay weak: a deep classifier could find the answer in traces of
the wording rather than in what the model remembers (Hewitt and Liang, 2019).

The experiment, for each checkpoint:

1. Generate conversations with `contextbot.text.dialogue`: sometimes a first person and a little small
   talk, then the *target* introduction ("Who is Megan Fox?"), then `MAX_DISTANCE` turns of small
   talk. From the introduction on, the pronoun of the target's gender means the target (the
   dialogue's slots track it) and small talk changes nothing, so whatever the state knows about
   the target d turns later it has carried across those d turns.
2. Feed every conversation with its right answers, as in training (teacher forcing, so every
   cell is probed on the same text), all conversations at once as one batch, one turn per
   forward call, and keep the whole carried state (h, and c for an LSTM) at the end of each turn
   from the introduction on, labelled with the referent, the referent's gender and the distance.
3. Fit one probe per question (which of the people; which gender) on the states of the training
   conversations, all distances together; report its accuracy on the held-out conversations
   distance by distance, next to chance (always guessing the commonest class).

A gated cell should keep the referent readable across all the small talk; a vanilla RNN, whose
state is rewritten by every character, should let it fade: the vanishing-gradient story, measured.
"""

from __future__ import annotations

import json
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..model.checkpoint import Checkpoint
from ..model.checkpoint import load as load_checkpoint
from ..paths import DEFAULT_FACTS
from ..text.dialogue import Talk, Turn
from ..errors import ContextbotError
from ..text.facts import Entity, load_facts
from ..model.network import RecurrentLM, State
from ..text.tokenizer import Tokenizer
from ..text.terminal import console_for
from ..text.turns import turn_ids

CONVERSATIONS = 600  # generated per checkpoint; a third of them are held out for testing
MAX_DISTANCE = 8  # turns of small talk after the introduction (training goes up to 3 in a row)
PROBE_SEED = 5_000_011  # never used by corpus build or eval
WEIGHT_DECAY = 1e-3  # L2 penalty on the probe's weights (the features are standardised)
GENDERS = ("he", "she")


@dataclass
class ProbeConversation:
    """A generated conversation and its labelled turn ends: (turn index, referent, gender,
    distance in turns since the target's introduction)."""

    turns: list[Turn]
    labels: list[tuple[int, int, int, int]]


def make_conversation(rng: random.Random, entities: list[Entity]) -> ProbeConversation:
    talk = Talk(rng, entities)
    if rng.random() < 0.5:  # someone else first, so the probe must read the *latest* person
        talk.intro(rng.choice(entities))
        for _ in range(rng.randint(0, 2)):
            talk.small_talk()
    target = rng.choice([e for e in entities if e not in talk.in_play])
    talk.intro(target)
    labels = []
    for d in range(MAX_DISTANCE + 1):
        if d:
            talk.small_talk()
        who = talk.slots[target.pronoun]  # whom "he"/"she" means now: the target, by the rules
        labels.append((len(talk.turns) - 1, entities.index(who), GENDERS.index(who.pronoun), d))
    return ProbeConversation(talk.turns, labels)


def make_conversations(entities: list[Entity], n: int, stream: str, seed: int = PROBE_SEED):
    rng = random.Random(f"contextbot-probe-{seed}-{stream}")
    return [make_conversation(rng, entities) for _ in range(n)]


def flat_state(state: State) -> torch.Tensor:
    """(layers, batch, hidden) -- or (h, c) for an LSTM -- to (batch, features)."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.cat([s.permute(1, 0, 2).reshape(s.shape[1], -1) for s in parts], dim=1)


def _select(state: State, idx: torch.Tensor) -> State:
    return tuple(s[:, idx] for s in state) if isinstance(state, tuple) else state[:, idx]


def _put(state: State, idx: torch.Tensor, sub: State) -> None:
    for s, u in zip(state, sub) if isinstance(state, tuple) else ((state, sub),):
        s[:, idx] = u


@torch.no_grad()
def turn_end_states(model: RecurrentLM, tok: Tokenizer, convs: list[ProbeConversation]) -> torch.Tensor:
    """The carried state at every labelled turn end, (samples, features), in label order.

    Each turn is the turn protocol of text/turns.py with its right answer in place of a generated
    one (teacher forcing): its prompt, its reply and the reply's newline, encoded as training and
    chat see them (`turns.turn_ids`). The conversations advance together one turn per forward
    call: the k-th turns of all of them, of different lengths, go through the model at once
    (`RecurrentLM.forward_packed`), which returns each one's full state (every layer, and an
    LSTM's cell) after its own last character -- exactly the state that conversation carries into
    its next turn.
    """
    device = model.embedding.weight.device
    state = model.zero_state(len(convs), device)
    rows, wanted = 0, {}  # (conversation, turn) -> sample row
    for b, conv in enumerate(convs):
        for turn, *_ in conv.labels:
            wanted[b, turn] = rows
            rows += 1
    needed = [max(turn for turn, *_ in conv.labels) + 1 for conv in convs]
    out = None
    for k in range(max(needed)):
        active = [b for b in range(len(convs)) if k < needed[b]]
        idx = torch.tensor(active, device=device)
        sequences = []
        for b in active:
            prompt, reply = turn_ids(tok, convs[b].turns[k].question, convs[b].turns[k].answer)
            sequences.append(torch.tensor(prompt + reply, device=device))
        _, sub = model.forward_packed(sequences, _select(state, idx))  # each one's state after its turn
        _put(state, idx, sub)
        flat = flat_state(sub)  # (active, features)
        if out is None:
            out = torch.empty(rows, flat.shape[1], device=device)
        for j, b in enumerate(active):
            if (b, k) in wanted:
                out[wanted[b, k]] = flat[j]
    return out.cpu()


class LinearProbe:
    """Multinomial logistic regression on standardised features, fitted with L-BFGS.

    The loss is convex, so starting from zero weights the fit is deterministic and needs no
    learning-rate schedule: mean cross-entropy plus `weight_decay` times the squared weights.
    """

    def __init__(self, num_classes: int, weight_decay: float = WEIGHT_DECAY, max_iter: int = 100):
        self.num_classes, self.weight_decay, self.max_iter = num_classes, weight_decay, max_iter

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "LinearProbe":
        self.mean, self.std = x.mean(0), x.std(0) + 1e-5
        z = self._standardise(x)  # (samples, features)
        w = torch.zeros(x.shape[1], self.num_classes, requires_grad=True)
        b = torch.zeros(self.num_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ w + b, y) + self.weight_decay * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = w.detach(), b.detach()
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self._standardise(x) @ self.w + self.b).argmax(-1)


@dataclass
class ProbeResult:
    """Held-out accuracy per distance for each question ("referent", "gender")."""

    label: str
    checkpoint: str
    sha256: str
    cell: str
    distances: list[int]
    accuracy: dict[str, list[float]]
    chance: dict[str, list[float]]  # the commonest class's share among the test states
    train_accuracy: dict[str, float]
    titles: dict[str, str]
    train_states: int = 0
    test_states: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


def checkpoint_label(ckpt: Checkpoint) -> str:
    c = ckpt.config
    size = f"{c.cell} {c.layers}x{c.hidden}"
    stem = ckpt.path.stem if ckpt.path else c.cell
    return size if stem == c.cell else f"{stem} ({size})"


@contextmanager
def one_thread():
    """Run on one CPU thread, then restore the setting.

    The probe is many small matrix products (one per turn and layer), where a second thread
    gains little and costs synchronisation; when the other core is busy (a training run next to
    it), every product waits for the slower thread, and the waits dominate.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def probe_checkpoint(ckpt: Checkpoint, entities: list[Entity], conversations: int = CONVERSATIONS,
                     seed: int = PROBE_SEED) -> ProbeResult:
    """Run the whole experiment on one checkpoint (see the module's docstring)."""
    t0 = time.perf_counter()
    n_test = max(1, conversations // 3)
    train = make_conversations(entities, max(1, conversations - n_test), "train", seed)
    test = make_conversations(entities, n_test, "test", seed)
    y_train = torch.tensor([lab[1:] for c in train for lab in c.labels])  # (samples, 3): who, gender, distance
    y_test = torch.tensor([lab[1:] for c in test for lab in c.labels])
    distances = list(range(MAX_DISTANCE + 1))
    titles = {"referent": f"which person ({len(entities)} people)", "gender": "which gender"}
    accuracy, chance, train_acc = {}, {}, {}
    with one_thread():
        model, tok = ckpt.model.eval(), ckpt.tokenizer
        x_train, x_test = turn_end_states(model, tok, train), turn_end_states(model, tok, test)
        for col, (target, classes) in enumerate((("referent", len(entities)), ("gender", len(GENDERS)))):
            linear = LinearProbe(classes).fit(x_train, y_train[:, col])
            train_acc[target] = float((linear.predict(x_train) == y_train[:, col]).float().mean())
            right = linear.predict(x_test) == y_test[:, col]
            accuracy[target], chance[target] = [], []
            for d in distances:
                at = y_test[:, 2] == d
                accuracy[target].append(float(right[at].float().mean()))
                counts = torch.bincount(y_test[at, col], minlength=classes)
                chance[target].append(float(counts.max()) / int(at.sum()))
    return ProbeResult(checkpoint_label(ckpt), str(ckpt.path), ckpt.sha256, ckpt.config.cell,
                       distances, accuracy, chance, train_acc, titles, len(x_train), len(x_test),
                       round(time.perf_counter() - t0, 2), ckpt.config.to_dict())


def print_results(results: list[ProbeResult], console: Console) -> None:
    first = results[0]
    table = Table(title="Linear probe accuracy on held-out conversations, by turns of small talk "
                        "since the introduction",
                  caption=f"{first.train_states} training states, {first.test_states} test states "
                          "per checkpoint; chance = always the commonest class")
    table.add_column("turns since", justify="right")
    for target, title in first.titles.items():
        for r in results:
            table.add_column(Text(f"{title}\n{r.label}"), justify="right")  # a path: not markup
        table.add_column(f"{title}\nchance", justify="right", style="dim")
    for i, d in enumerate(first.distances):
        row = [str(d)]
        for target in first.titles:
            row += [f"{r.accuracy[target][i]:.1%}" for r in results]
            row.append(f"{first.chance[target][i]:.1%}")
        table.add_row(*row)
    console.print(table)
    for r in results:
        fits = ", ".join(f"{t} {a:.1%}" for t, a in r.train_accuracy.items())
        console.print(f"{r.label}: training accuracy {fits}; {r.seconds:.1f} s", highlight=False,
                      markup=False)


def run(paths: list, plot_path: Path | None, as_json: bool, conversations: int = CONVERSATIONS) -> int:
    """`contextbot inspect --probe [--checkpoint P ...]`: one column per checkpoint."""
    if conversations < 3:
        raise ContextbotError("--conversations must be at least 3")
    checkpoints = [load_checkpoint(p) for p in paths]  # every bad path fails before any work
    entities = load_facts(DEFAULT_FACTS)
    results = [probe_checkpoint(c, entities, conversations) for c in checkpoints]
    console = console_for(stderr=as_json)
    if as_json:
        sys.stdout.write(json.dumps({"conversations": conversations, "seed": PROBE_SEED,
                                     "max_distance": MAX_DISTANCE,
                                     "results": [asdict(r) for r in results]}) + "\n")
    else:
        print_results(results, console)
    if plot_path:
        from . import plots
        plots.save(plots.probe_figure(results), plot_path)
        console.print(f"wrote {plot_path}", highlight=False, markup=False)
    return 0
