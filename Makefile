# contextbot: every target sets up .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A pinned CPU wheel: a plain `torch` would pull a CUDA build of several GB. Override for a GPU:
#   make test TORCH_SPEC='torch==2.13.0 --index-url ...'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup chat test test-all checkpoints results figures clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

chat: $(STAMP)
	$(BIN)/contextbot chat

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# The three shipped checkpoints, from the shipped corpus (the times are in README's results table).
# One thread each, as they were trained. The GRU's second command is a warm restart to 6000 steps.
# lstm and rnn: the commands for issue 3; those checkpoints are not shipped yet.
checkpoints: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/contextbot train --cell gru --out checkpoints/gru.safetensors
	OMP_NUM_THREADS=1 $(BIN)/contextbot train --out checkpoints/gru.safetensors --steps 6000 --resume
	OMP_NUM_THREADS=1 $(BIN)/contextbot train --cell lstm --steps 1500 --out checkpoints/lstm.safetensors
	OMP_NUM_THREADS=1 $(BIN)/contextbot train --cell rnn --steps 1500 --out checkpoints/rnn.safetensors

# README's table "How well it remembers": eval over the three shipped checkpoints.
results: $(STAMP)
	$(BIN)/python -m contextbot.results

# The README's figures ("What the state remembers"), from the shipped checkpoints.
FIGURE_CELLS := gru lstm rnn
figures: $(STAMP)
	mkdir -p docs
	$(BIN)/contextbot inspect --checkpoint checkpoints/gru.safetensors --plot docs/seed-dialogue.png
	$(BIN)/contextbot inspect --checkpoint checkpoints/gru.safetensors --units 'Megan Fox' --plot docs/units-megan-fox.png
	$(BIN)/contextbot inspect --probe $(foreach c,$(FIGURE_CELLS),$(if $(wildcard checkpoints/$(c).safetensors),--checkpoint checkpoints/$(c).safetensors)) --plot docs/probe.png

clean:
	rm -rf $(VENV) .pytest_cache
