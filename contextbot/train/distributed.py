"""Training on several processes, GPUs or machines: torchrun plus DistributedDataParallel (DDP).

`torchrun` starts one copy of `contextbot train` per process and tells each, in environment
variables, who it is: RANK (0 .. WORLD_SIZE-1 over the whole job), LOCAL_RANK (which process on
this machine: picks the GPU), WORLD_SIZE, and MASTER_ADDR/MASTER_PORT (where to meet).
`detect()` reads them; without them a `World` is one ordinary process and every helper here
does nothing, so a plain `contextbot train` runs exactly as it always has.

How the work is split (*data parallelism*):

- Every rank builds the same model from the same seed and the same `Streams` layout of the corpus.
  With `--batch B` streams in all and W ranks, rank r trains on streams r, r+W, r+2W, ...
  (`World.shard`), so the W ranks together cover exactly the batch one process would train on.
- Each rank runs forward and backward on its share. During backward, DDP *averages* every
  gradient over the ranks (an all-reduce), so all ranks hold the same gradient and take the same
  optimizer step: their weights never drift apart and are never sent around.
- The carried hidden state stays with its rank (it is per stream). A checkpoint gathers all the
  shares on rank 0 (`World.gather`), so it holds every stream, exactly like a single process's.

**The loss.** One process minimises the weighted mean over the whole batch,
L = Σ_i w_i·ce_i / Σ_i w_i, over all streams i. Rank r holds only its streams S_r, and DDP's
gradient is the mean of the ranks' gradients, (1/W) Σ_r ∇L_r. Choosing
L_r = W · Σ_{i∈S_r} w_i·ce_i / Σ_i w_i (the denominator summed over *all* ranks: `World.all_sum`)
gives (1/W) Σ_r W · Σ_{i∈S_r} ∇(w_i·ce_i) / Σ_i w_i = ∇L: the single-process gradient, up to
the order of floating-point additions. (Dividing by the rank's own Σ w_i instead would weight a
rank whose share is mostly padding as much as a full one.)

**Errors.** A user error on one rank must not leave the others waiting for it forever inside a
collective. So every rank does all its checking (options, corpus, checkpoint) *before* it joins
the process group, and the first thing the ranks do together is agree whether all of them got
that far (`joined`). If any did not, every rank stops; the lowest failing rank says why.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import nn

from .batches import Batch
from ..errors import ContextbotError
from ..model.network import State

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# A CUDA generator's state as torch.cuda.get_rng_state() returns it: seed and offset, 8 bytes each.
CUDA_RNG_SHAPE = (16,)


@dataclass(frozen=True)
class World:
    """Who this process is in the job. The default is a single process on its own."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    active: bool = False  # started by torchrun: there is (or will be) a process group

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """NCCL talks GPU to GPU; gloo talks over TCP between CPU processes."""
        return "nccl" if self.device.type == "cuda" else "gloo"

    def check(self, batch: int) -> None:
        """Refuse what cannot work, before joining (every rank checks the same things)."""
        if batch % self.size:
            raise ContextbotError(f"--batch {batch} does not split over {self.size} processes: "
                                  f"--batch is the total number of streams, so make it a "
                                  f"multiple of {self.size}")

    # -- splitting the batch and putting it back together ------------------------------------

    def shard(self, batch: Batch) -> Batch:
        """This rank's streams of a full batch: rows rank, rank+size, rank+2·size, ..."""
        if self.size == 1:
            return batch
        return Batch(**{f.name: getattr(batch, f.name)[self.rank::self.size].contiguous()
                        for f in fields(batch)})

    def shard_state(self, state: State | None) -> State | None:
        """This rank's streams of a full carried state, (layers, batch, hidden) -> (layers, batch/size, hidden)."""
        if state is None or self.size == 1:
            return state
        if isinstance(state, tuple):
            return tuple(s[:, self.rank::self.size].contiguous() for s in state)
        return state[:, self.rank::self.size].contiguous()

    def gather(self, part: torch.Tensor, dim: int) -> torch.Tensor:
        """The inverse of sharding along `dim`: every rank's rows, interleaved back in stream order.

        A collective: every rank must call it. Rank r's row j is stream j·size + r.
        """
        if not self.active:
            return part
        parts = [torch.empty_like(part, device=self.device) for _ in range(self.size)]
        dist.all_gather(parts, part.to(self.device).contiguous())
        whole = torch.stack(parts, dim=dim + 1)  # (..., batch/size, size, ...): [j, r] is stream j·size + r
        return whole.flatten(dim, dim + 1).to(part.device)

    def gather_state(self, state: State | None) -> State | None:
        """Every stream's carried state (a collective), for the checkpoint."""
        if state is None:
            return None
        if isinstance(state, tuple):
            return tuple(self.gather(s, dim=1) for s in state)
        return self.gather(state, dim=1)

    # -- random numbers (dropout) ------------------------------------------------------------

    def seed_rng(self, seed: int, saved: dict[str, torch.Tensor] | None = None) -> None:
        """Give this rank its own random stream for dropout, or restore it when resuming.

        Rank 0 continues the seed's stream, exactly as one process would; the other ranks reseed,
        so that their streams are not dropped out with the same masks as rank 0's.
        """
        saved = saved or {}
        # On a GPU, dropout draws from the device's own generator, so a checkpoint carries that
        # state too (`rng_cuda`): without it a resumed run on a GPU drew other dropout masks than
        # the uninterrupted one (tests/train/test_train.py caught it on an H100). A checkpoint written
        # on one kind of device and resumed on the other continues the CPU stream only.
        rows, cuda_rows = saved.get("rng_ranks"), saved.get("rng_cuda_ranks")
        # clone(): torch.set_rng_state crashes (SIGSEGV, torch 2.13) on a view that does not
        # start at the beginning of its storage, such as a row of rng_ranks.
        if rows is not None and rows.shape[0] == self.size:
            torch.set_rng_state(rows[self.rank].clone())
            if self.device.type == "cuda" and cuda_rows is not None and cuda_rows.shape[0] == self.size:
                torch.cuda.set_rng_state(cuda_rows[self.rank].clone(), self.device)
            return
        if "rng" in saved:  # a single-process checkpoint, or one from another number of ranks
            torch.set_rng_state(saved["rng"].clone())
            if self.device.type == "cuda" and "rng_cuda" in saved:
                torch.cuda.set_rng_state(saved["rng_cuda"].clone(), self.device)
        if self.rank > 0:
            torch.manual_seed(seed + 1_000_003 * self.rank)

    def gather_rng(self) -> dict[str, torch.Tensor]:
        """The random state(s) a checkpoint needs (a collective): rank 0's as `rng`, all as `rng_ranks`."""
        out = {"rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            out["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.active:  # every rank's, as rows of (size, state bytes)
            out |= {f"{k}_ranks": self.gather(v.unsqueeze(0), dim=0) for k, v in list(out.items())}
        return out

    # -- talking to the other ranks ----------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model under torchrun (it all-reduces the gradients in backward); else the model."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over all ranks (every rank must call it); `t` itself in a single process."""
        if not self.active:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum(self, *values: float) -> list[float]:
        """Plain numbers summed over all ranks, in one all-reduce: the whole job's totals."""
        if not self.active:
            return list(values)
        return self.all_sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def leave(self) -> None:
        """Leave the process group at the end of training (every rank must call it)."""
        if self.active and dist.is_initialized():
            _shut_down()


def detect() -> World:
    """The `World` torchrun describes in the environment, or a single process without it."""
    present = [v for v in TORCHRUN_VARS if v in os.environ]
    cuda = torch.cuda.is_available()
    if not present:
        return World(device=torch.device("cuda" if cuda else "cpu"))
    if len(present) < len(TORCHRUN_VARS):
        missing = ", ".join(v for v in TORCHRUN_VARS if v not in present)
        raise ContextbotError(f"the environment sets {', '.join(present)} but not {missing}: "
                              "start distributed training with torchrun")
    try:
        rank, size, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ContextbotError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None
    if not 0 <= rank < size:
        raise ContextbotError(f"RANK {rank} is not in 0..{size - 1} (WORLD_SIZE {size})")
    if cuda and local >= torch.cuda.device_count():
        # Checked at once: without a GPU of its own this rank could not even join the vote.
        raise ContextbotError(f"local rank {local} has no GPU of its own (this machine has "
                              f"{torch.cuda.device_count()}): start at most one process per GPU "
                              "(--nproc-per-node gpu)")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    return World(rank=rank, local_rank=local, size=size, device=device, active=True)


@contextmanager
def joined(world: World):
    """Run the setup in the `with` block, then join the process group, together or not at all.

    Each rank does its setup on its own (it can fail: a missing corpus on one machine, a bad
    checkpoint). Then every rank joins the group and they vote: the lowest rank that failed raises
    its error (one `contextbot: error:` line), the others exit with status 2 quietly. Nobody is
    left waiting in a collective for a rank that has already gone.
    """
    try:
        yield
    except ContextbotError as exc:
        _join_and_vote(world, exc)
        raise
    _join_and_vote(world, None)


def _join_and_vote(world: World, error: ContextbotError | None) -> None:
    if not world.active:
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend=world.backend,
                            device_id=world.device if world.device.type == "cuda" else None)
    first_failed = torch.tensor([world.rank if error else world.size], device=world.device)
    dist.all_reduce(first_failed, op=dist.ReduceOp.MIN)
    first_failed = int(first_failed)
    if first_failed == world.size:
        return  # everyone is ready
    _shut_down()
    if first_failed == world.rank:
        raise error
    raise SystemExit(2)  # rank `first_failed` has said what is wrong


_final_barrier = None  # kept for the life of the process: see _shut_down


def _shut_down() -> None:
    """A barrier, then destroy the process group, without the hang gloo can fall into.

    Gloo runs each collective on worker threads. A worker that drops the last reference to a
    finished collective must take Python's GIL to free its tensors; the group's destructor (which
    runs when DDP, its last owner, is freed) joins those workers while holding the GIL. If the
    last collective has only just finished, each waits for the other forever (seen with torch
    2.13 in about one run in six). So the last collective is a barrier whose handle Python
    keeps, together with whatever collective it waited for: no worker ever drops a last
    reference, and the workers are idle when the destructor joins them.
    """
    global _final_barrier
    _final_barrier = dist.barrier(async_op=True)
    _final_barrier.wait()
    dist.destroy_process_group()
