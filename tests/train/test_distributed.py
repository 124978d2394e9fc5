"""Training with torchrun and DistributedDataParallel: two gloo processes on the CPU must train the
model one process would, write an ordinary checkpoint, and resume from it.

The torchrun runs are subprocesses (a few seconds each: every process imports torch); the module's
runs are shared between tests to keep the file quick.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from contextbot.chat import ChatSession
from contextbot.errors import ContextbotError
from contextbot.model import checkpoint
from contextbot.model.network import ModelConfig, RecurrentLM
from contextbot.text.tokenizer import Tokenizer
from contextbot.train import distributed
from contextbot.train.batches import Batch, BatchSchedule, encode_conversation
from contextbot.train.loop import batch_loss, load_corpus, train
from contextbot.train.options import TrainOptions

from ..conftest import TINY_CORPUS
from .conftest import TIMEOUT, launcher

# A tiny GRU; --batch 4 gives each of two ranks two streams.
TINY = dict(hidden=16, embed=8, batch=4, seq_len=24, eval_every=3, checkpoint_every=2, json=True)
TINY_ARGS = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "24",
             "--eval-every", "3", "--checkpoint-every", "2", "--json"]
def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N -m contextbot train ...`, one thread a process,
    on the CPU (gloo) even where a GPU is present: these tests are about the processes agreeing,
    and a one-GPU machine refuses a second process per GPU (test_a_rank_without_a_gpu_of_its_own_is_refused)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*launcher(), "--standalone", "--nproc_per_node", str(nproc),
                           "-m", "contextbot", "train", *args],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)


def _train_args(corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--corpus", str(corpus), "--valid", str(corpus), "--out", str(out),
            "--steps", str(steps), *TINY_ARGS, *extra]


def _summary(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, f"only rank 0 prints its summary: {r.stdout!r}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny corpus twice: four conversations, one for each of --batch 4's streams."""
    p = tmp_path_factory.mktemp("ddp") / "tiny.txt"
    p.write_text(TINY_CORPUS + "\n" + TINY_CORPUS, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def two_process_run(corpus):
    """6 steps on two gloo processes: (checkpoint, summary, stderr)."""
    out = corpus.parent / "ddp.safetensors"
    r = _torchrun(2, *_train_args(corpus, out, 6))
    return out, _summary(r), r.stderr


# -- the mathematics, in one process --------------------------------------------------------------

class _FakeWorld:
    """Stands in for rank r of `size`: all_sum returns the whole batch's total."""

    def __init__(self, size: int, total: torch.Tensor):
        self.size, self._total = size, total

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._total


def test_the_averaged_rank_gradients_are_the_single_process_gradient(tiny_corpus):
    """DDP averages the ranks' gradients; with batch_loss that average is the full batch's gradient."""
    convs, _ = load_corpus(str(tiny_corpus))
    tok = Tokenizer.train(TINY_CORPUS.splitlines())
    encoded = [encode_conversation(c, tok, 3.0) for c in convs]
    batch = BatchSchedule(encoded, batch=4, seq_len=16, seed=0).get(4)  # uneven padding per stream
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(vocab_size=tok.vocab_size, embed=8, hidden=16))

    def grads(b, world):
        model.zero_grad()
        logits, _ = model(b.inputs)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.targets.flatten(),
                                               reduction="none").view_as(b.weights)
        batch_loss(ce, b.weights, world).backward()
        return [p.grad.clone() for p in model.parameters()]

    single = grads(batch, distributed.World())
    ranks = [distributed.World(rank=r, size=2) for r in range(2)]
    shares = [grads(w.shard(batch), _FakeWorld(2, batch.weights.sum())) for w in ranks]
    assert shares[0][0].ne(shares[1][0]).any(), "the ranks should see different data"
    for s, a, b in zip(single, *shares):
        torch.testing.assert_close((a + b) / 2, s)
    # Each rank dividing by its own weight alone would not do: the shares weigh differently.
    naive = [grads(s, _FakeWorld(1, s.weights.sum())) for s in (w.shard(batch) for w in ranks)]
    assert not torch.allclose((naive[0][-1] + naive[1][-1]) / 2, single[-1])


def test_shards_cover_the_batch_and_the_state_streams():
    full = torch.arange(6 * 4).view(6, 4)  # 6 streams
    b = Batch(full, full, full.float(), full.float(), full.float(), full)  # keep: (batch, seq)
    parts = [distributed.World(rank=r, size=3).shard(b) for r in range(3)]
    assert [p.inputs[:, 0].tolist() for p in parts] == [[0, 12], [4, 16], [8, 20]]
    assert sorted(torch.cat([p.keep[:, 0] for p in parts]).tolist()) == [0, 4, 8, 12, 16, 20]
    state = torch.arange(2 * 6 * 3).view(2, 6, 3)  # (layers, batch, hidden)
    mine = distributed.World(rank=1, size=3).shard_state((state, -state))
    assert torch.equal(mine[0], state[:, 1::3]) and torch.equal(mine[1], -state[:, 1::3])


def test_batch_must_split_evenly():
    with pytest.raises(ContextbotError, match="multiple of 2"):
        distributed.World(size=2, active=True).check(3)
    distributed.World(size=2, active=True).check(4)


def test_detect_without_torchrun_is_one_process(monkeypatch):
    for v in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(v, raising=False)
    world = distributed.detect()
    assert (world.size, world.rank, world.active, world.is_main) == (1, 0, False, True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ContextbotError, match="torchrun"):
        distributed.detect()


def test_a_rank_without_a_gpu_of_its_own_is_refused(monkeypatch):
    """Two processes on a one-GPU machine: the second one says so at once, in one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for v in distributed.TORCHRUN_VARS:
        monkeypatch.setenv(v, env.get(v, "0"))
    with pytest.raises(ContextbotError, match="local rank 1 has no GPU of its own .this machine has 1"):
        distributed.detect()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.detect().device == torch.device("cuda", 0)


# -- two processes under torchrun -----------------------------------------------------------------

def test_two_processes_write_a_checkpoint_that_ask_loads(two_process_run):
    out, summary, stderr = two_process_run
    assert summary["steps"] == 6 and summary["valid_bpc"] is not None
    assert stderr.count("step 3: train") == 1, "only rank 0 prints progress"
    ck = checkpoint.load(out)  # refuses DDP's 'module.' names: the weights are the plain model's
    assert ck.step == 6 and ck.train_options["processes"] == 2
    assert ck.train_tensors["state_h"].shape == (1, 4, 16), "the state of every stream is saved"
    assert isinstance(ChatSession.load(out).ask("Who is Tom Cruise?"), str)


def test_two_processes_train_what_one_process_trains(two_process_run, corpus, tmp_path):
    out, summary, _ = two_process_run
    one = train(TrainOptions(corpus=str(corpus), valid=str(corpus),
                             out=str(tmp_path / "one.safetensors"), steps=6, **TINY))
    a, b = checkpoint.load(tmp_path / "one.safetensors"), checkpoint.load(out)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    # Adam's moments carry the gradient's scale (a loss off by the number of ranks shows here),
    # the carried state each stream's (a stream given back to the wrong place shows here).
    for k, v in a.train_tensors.items():
        if k.startswith("optim.") or k.startswith("state_"):
            torch.testing.assert_close(b.train_tensors[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert summary["chars"] == one["chars"], "throughput counts every rank's characters"
    assert summary["train_bpc"] == pytest.approx(one["train_bpc"], abs=1e-3)
    assert summary["valid_bpc"] == pytest.approx(one["valid_bpc"], abs=1e-3)


def test_a_resumed_distributed_run_goes_on_from_its_step(two_process_run, corpus, tmp_path):
    out, _, _ = two_process_run
    part = tmp_path / "part.safetensors"
    # Steps 0-3 in one process (same streams, same checkpoint format), 3-6 on two ranks.
    train(TrainOptions(corpus=str(corpus), valid=str(corpus), out=str(part), steps=3, **TINY))
    s = _summary(_torchrun(2, *_train_args(corpus, part, 6, "--resume")))
    assert s["steps"] == 6 and checkpoint.load(part).step == 6
    a, b = checkpoint.load(out).model.state_dict(), checkpoint.load(part).model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


RANK_ONE_FAILS = """
import os, sys
from contextbot.cli import main
corpus = sys.argv[1] + ("-missing" if os.environ["RANK"] == "1" else "")
sys.exit(main(["train", "--corpus", corpus, "--valid", "none", "--out", sys.argv[2],
               "--steps", "2", "--hidden", "8", "--batch", "2", "--seq-len", "16"]))
"""


def test_an_error_on_one_machine_stops_the_other(corpus, tmp_path):
    """Two torchrun agents, as on two machines, where rank 1 alone cannot read its corpus.

    Without the vote in `distributed.joined`, rank 0 would wait in init_process_group until the
    timeout (its own agent does not know that the other machine's worker has failed)."""
    script = tmp_path / "rank_one_fails.py"
    script.write_text(RANK_ONE_FAILS, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cmd = [*launcher(), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "test",
           str(script), str(corpus), str(tmp_path / "m.safetensors")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        outputs = [n.communicate(timeout=TIMEOUT) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    stderr = "".join(err for _, err in outputs)
    assert all(n.returncode != 0 for n in nodes)
    assert stderr.count("contextbot: error: ") == 1 and "-missing: no such corpus file" in stderr
    assert "exitcode  : 2" in stderr and "contextbot/" not in stderr, "no rank crashed"
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_a_user_error_under_torchrun_is_one_line(corpus, tmp_path):
    r = _torchrun(2, *_train_args(corpus, tmp_path / "m.safetensors", 2), "--batch", "3")
    assert r.returncode != 0
    assert r.stderr.count("contextbot: error: --batch 3 does not split over 2 processes") == 1
    assert "contextbot/" not in r.stderr, "no rank crashed with a traceback"
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_a_distributed_resume_with_dropout_is_exact(corpus, tmp_path):
    """Two ranks, stopped at step 3 and resumed: the same weights as six steps straight, bit for bit
    (each rank's dropout stream and carried state come back from the checkpoint)."""
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    drop = ("--dropout", "0.2", "--layers", "2")
    _summary(_torchrun(2, *_train_args(corpus, full, 6, *drop)))
    _summary(_torchrun(2, *_train_args(corpus, part, 3, *drop)))
    _summary(_torchrun(2, *_train_args(corpus, part, 6, "--resume")))
    a, b = checkpoint.load(full).model.state_dict(), checkpoint.load(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed distributed run diverged"

