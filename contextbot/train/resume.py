"""What a checkpoint holds so that `--resume` continues a run exactly where it stopped.

Beside the weights and the tokenizer (model/checkpoint.py), training saves:

- the recipe (TrainOptions.RECIPE) and the run's facts in the metadata: `metadata()`;
- AdamW's moments and step counts, one tensor each, as `optim.{parameter}.{name}`;
- the carried hidden state of every stream, `state_h` and, for an LSTM, `state_c`,
  each (layers, batch, hidden);
- the random generators' states (distributed.World.gather_rng), for dropout.

The batch for a step is a pure function of (seed, step), so the data's position need not be
saved. A resumed run on the CPU then computes exactly what the uninterrupted one would have, bit
for bit. Everything read back is checked first, so that a damaged or foreign file is one line of
error before training starts, never a crash inside the first step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ContextbotError
from ..model import checkpoint
from ..model.network import RecurrentLM, State
from . import distributed
from .options import TrainOptions, flag_name

# The recipe options that are also the model's shape: a checkpoint's recipe must agree with the
# model it holds, checked before a model is built from the recipe (its sizes are the file's).
MODEL_OPTIONS = ("cell", "hidden", "layers", "embed", "dropout", "chrono_tmax", "chrono_fraction",
                 "chrono_spread")

# -- writing -------------------------------------------------------------------------------------

def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state, flat: {"optim.0.exp_avg": ..., "optim.0.step": ...}."""
    out = {}
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            out[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def state_tensors(state: State | None) -> dict[str, torch.Tensor]:
    """The carried state of every stream: h, and c for an LSTM, each (layers, batch, hidden)."""
    if state is None:
        return {}
    if isinstance(state, tuple):
        return {"state_h": state[0], "state_c": state[1]}
    return {"state_h": state}


def metadata(o: TrainOptions, *, referents: str, seconds: float, device: torch.device,
             processes: int, referent_names: list[str] | None = None) -> dict:
    """What the checkpoint's metadata says about the run: the recipe to resume with, the people
    of the referent signal (`Referents.key()`, "" without it, and their names in class order, for
    the memory readout: analysis/readout.py), and the training time of all runs of this model
    together."""
    return {"recipe": o.recipe(), "steps": o.steps, "corpus": o.corpus, "referents": referents,
            "referent_names": list(referent_names or []),
            "seconds": round(seconds, 1), "device": str(device),
            "threads": torch.get_num_threads(), "processes": processes}


# -- reading back --------------------------------------------------------------------------------

def load(out: Path, o: TrainOptions, corpus_sha256: str) -> checkpoint.Checkpoint:
    """The checkpoint at `out`, checked, with its recipe put into `o`: a resumed run trains with
    the recipe it started with, on the corpus it started on. A recipe option the user gave
    (`o.given`) with another value than the checkpoint's is refused, not silently dropped."""
    if not out.exists():
        raise ContextbotError(f"{out}: nothing to resume (no such checkpoint)")
    saved = checkpoint.load(out)
    recipe = saved_recipe(out, saved.train_options)
    recipe.setdefault("referent_weight", 0.0)  # checkpoints from before the referent signal
    check_model(out, recipe, saved)
    if saved.metadata.get("corpus_sha256") != corpus_sha256:
        raise ContextbotError(f"{out}: was trained on a different corpus than {o.corpus}")
    check_given(out, o, recipe)
    for k, v in recipe.items():
        setattr(o, k, v)
    o.validate()
    return saved


def _shown(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_given(out: Path, o: TrainOptions, recipe: dict) -> None:
    """Refuse the recipe options the user gave that differ from the checkpoint's: --resume
    continues the saved recipe, and a --hidden 512 that does nothing would be a silent lie."""
    differ = [f"{flag_name(k)} {_shown(getattr(o, k))} differs from its {_shown(v)}"
              for k, v in recipe.items() if k in o.given and getattr(o, k) != v]
    if differ:
        raise ContextbotError(f"--resume continues the recipe saved in {out}: {', '.join(differ)}; "
                              "drop the flag or train a new --out")


def check_model(out: Path, recipe: dict, saved: checkpoint.Checkpoint) -> None:
    """The recipe's model options are the model's own: checked before anything is built from them."""
    for k in MODEL_OPTIONS:
        if k in recipe and recipe[k] != getattr(saved.config, k):
            raise ContextbotError(f"{out}: the training recipe disagrees with the model in the checkpoint "
                                  f"({k}={recipe[k]!r}, the model's is {getattr(saved.config, k)!r})")


def saved_recipe(out: Path, saved: dict) -> dict:
    """The recipe a checkpoint was trained with, checked before it is used: only recipe options,
    each of its default's type (a file from elsewhere must not set --out, or hidden="abc")."""
    recipe = saved.get("recipe")
    if not isinstance(recipe, dict):
        raise ContextbotError(f"{out}: checkpoint has no training state to resume from")
    defaults = TrainOptions().recipe()  # every cell's recipe has the same types: no None left
    for k, v in recipe.items():
        d = defaults.get(k)
        if d is None or not (type(v) is type(d) or (type(d) is float and type(v) is int)):
            raise ContextbotError(f"{out}: the training recipe in the checkpoint is damaged ({k}={v!r})")
    # Its values by TrainOptions' own rules (NaN, negative weights, sizes that would allocate
    # tens of GB), before any of it is used: one line here, not an out-of-memory crash later.
    probe = TrainOptions(cell=recipe.get("cell", "gru"))
    for k, v in recipe.items():
        setattr(probe, k, v)
    try:
        probe.validate_recipe()
    except ContextbotError as exc:
        raise ContextbotError(f"{out}: the training recipe in the checkpoint is damaged or absurd ({exc})") from None
    return dict(recipe)


def check_referents(out: Path, saved: checkpoint.Checkpoint, key: str, facts: str | Path) -> None:
    """The referent head's classes are the people of one facts file, in order: resume with those."""
    if saved.train_options.get("referents", key) != key:
        raise ContextbotError(f"{out}: was trained with other people for the referent signal than {facts} "
                              "names (or in another order): resume with the --facts it was trained with")


def restore(out: Path, saved: checkpoint.Checkpoint, model: RecurrentLM, opt: torch.optim.Optimizer,
            batch: int, world: distributed.World) -> tuple[int, State | None]:
    """Put the saved weights and optimizer state into `model` and `opt`; return the step to go on
    from and this rank's share of the carried state."""
    if model.config != saved.config:
        raise ContextbotError(f"{out}: the training recipe disagrees with the model in the checkpoint")
    t = saved.train_tensors
    check_training_state(out, t, model, batch)
    model.load_state_dict(saved.model.state_dict())
    restore_optimizer(opt, t)
    state = None
    if "state_h" in t:
        h = t["state_h"].to(world.device)  # (layers, batch, hidden): every stream's
        state = (h, t["state_c"].to(world.device)) if "state_c" in t else h
        state = world.shard_state(state)  # (layers, batch / ranks, hidden): ours
    return saved.step, state


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of optimizer_tensors."""
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    if len(state) != len(sd["param_groups"][0]["params"]):
        raise ContextbotError("checkpoint has no complete optimizer state to resume from")
    sd["state"] = state
    opt.load_state_dict(sd)


def check_training_state(out: Path, t: dict[str, torch.Tensor], model: RecurrentLM, batch: int) -> None:
    """Check the saved optimizer moments, carried state and RNG against the model now, so that a
    damaged file is one line here rather than a crash somewhere in the first step."""
    params = list(model.parameters())
    c = model.config
    for key, v in t.items():
        want, dtype = None, None
        if key.startswith("optim."):
            i, _, name = key[len("optim."):].partition(".")
            if not i.isdigit() or int(i) >= len(params):
                raise ContextbotError(f"{out}: the training state has an unknown tensor {key}")
            want = () if name == "step" else tuple(params[int(i)].shape)
        elif key in ("state_h", "state_c"):
            want = (c.layers, batch, c.hidden)
        elif key in ("rng", "rng_cuda", "rng_ranks", "rng_cuda_ranks"):  # see World.gather_rng
            row = distributed.CUDA_RNG_SHAPE if "cuda" in key else tuple(torch.get_rng_state().shape)
            ranks = key.endswith("_ranks")  # one row a rank
            want, dtype = ((v.shape[0] if v.dim() == 2 else -1, *row) if ranks else row), torch.uint8
        if want is not None and (tuple(v.shape) != want or (dtype is not None and v.dtype != dtype)
                                 or (v.is_floating_point() and not torch.isfinite(v).all())):
            raise ContextbotError(f"{out}: the training state is damaged ({key} has shape "
                                  f"{tuple(v.shape)} {v.dtype}, the run needs {want})")
