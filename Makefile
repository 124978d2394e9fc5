# contextbot: every target sets up .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A pinned CPU wheel: a plain `torch` would pull a CUDA build of several GB. Override for a GPU:
#   make test TORCH_SPEC='torch==2.13.0 --index-url ...'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Steps that fit in 15 minutes on a 2-core machine (measured: docs/experiments.md). The RNN's
# shipped checkpoint is 4200 steps (10.5 minutes); 5400 fit in 13.4 minutes, and were no better.
# The LSTM's learning rate, chrono fraction and chunk length are its own defaults (CELL_RECIPES in
# contextbot/train/options.py); like the GRU it takes 16 streams a step and one warm restart: 4000 steps, then
# --resume to 16500, which took 13.7 minutes here at full speed (the shipped one 15.1, on a slower
# stretch of this VM). Its legs have no time limit: a leg cut short would stop before its learning
# rate had decayed, and would not give the shipped model again.
LSTM_FIRST ?= 4000
LSTM_STEPS ?= 16500
RNN_STEPS ?= 4200

.PHONY: setup chat test test-all browser checkpoints results figures bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c 'import contextbot; contextbot.ChatSession.load()'  # compile the chat step once
	touch $(STAMP)

chat: $(STAMP)
	$(BIN)/contextbot chat

# The quick suite (not the tests marked slow). `make test PYTEST_ARGS='-m "not slow and not shipped"'`
# also leaves out the shipped checkpoints' tests, for a developer who is changing the model.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Everything, slow tests included: what CI runs (.ci/run).
test-all: $(STAMP) browser
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

# A headless browser for `contextbot chat --web`'s test (tests/ui/test_web.py) and its figure:
# Debian's chromium and chromium-driver, installed only as root with apt-get; elsewhere the test
# skips and says why. Selenium, which drives them, is a dev extra (pyproject.toml).
browser: $(STAMP)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	    || echo "make browser: apt-get could not install chromium; the browser test will skip"; \
	else echo "make browser: no chromium, and no apt-get as root to install it; the browser test will skip"; fi

# The three shipped checkpoints, from the shipped corpus, one after another (each uses both
# cores; their training times are in README's results table). The GRU is the default recipe
# (4000 steps of 16 streams of 192 characters), then one warm restart to 16000 steps: --resume
# with more --steps picks the cosine learning rate up again where the longer schedule has it
# (step 4000 of 16000). The LSTM and the vanilla RNN get about 15 minutes each, with as many
# steps as fit in that time here; the LSTM's in two legs like the GRU's.
checkpoints: $(STAMP)
	$(BIN)/contextbot train --out checkpoints/gru.safetensors
	$(BIN)/contextbot train --out checkpoints/gru.safetensors --steps 16000 --resume
	$(BIN)/contextbot train --cell lstm --steps $(LSTM_FIRST) --out checkpoints/lstm.safetensors
	$(BIN)/contextbot train --steps $(LSTM_STEPS) --resume --out checkpoints/lstm.safetensors
	$(BIN)/contextbot train --cell rnn --steps $(RNN_STEPS) --minutes 15 --out checkpoints/rnn.safetensors

# Eval over the three shipped checkpoints: writes docs/results.json, the full table in
# docs/results.md and the short one in README.md (between the results markers).
results: $(STAMP)
	$(BIN)/python -m contextbot.analysis.results

# The figures, from the shipped checkpoints: README's screenshot of the chat (docs/ui.svg) and
# the four figures of docs/inspecting.md (`contextbot inspect`).
FIGURE_CELLS := gru lstm rnn
figures: $(STAMP) browser
	mkdir -p docs
	$(BIN)/python -m contextbot.ui.screenshot docs/ui.svg
	$(BIN)/python -m contextbot.ui.webshot --screenshot docs/ui-web.png  # chat --web, in Chromium
	$(BIN)/contextbot inspect --checkpoint checkpoints/gru.safetensors --plot docs/seed-dialogue.png
	$(BIN)/contextbot inspect --checkpoint checkpoints/gru.safetensors --units 'Megan Fox' --plot docs/units-megan-fox.png
	$(BIN)/contextbot inspect --readout --checkpoint checkpoints/gru.safetensors --plot docs/readout.png
	$(BIN)/contextbot inspect --probe $(foreach c,$(FIGURE_CELLS),$(if $(wildcard checkpoints/$(c).safetensors),--checkpoint checkpoints/$(c).safetensors)) --plot docs/probe.png

# Speed and memory: writes docs/bench.json and the table in docs/performance.md.
# `make bench BENCH_ARGS=--quick` for a short run that writes nothing.
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
