# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian's data packages the tests and notebooks read (Fashion-MNIST, WordNet), tried once
DATA_STAMP := $(VENV)/.data
SYSTEM_DATA := $(or $(PYRO_VI_SYSTEM_DATA),/usr/share)

.PHONY: demo test lint format install data clean bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Where this machine can (apt-get, and root or password-less sudo), install the Debian packages;
# never fails: without them the tests that need them skip, naming this command. Retry: make data.
$(DATA_STAMP):
	@need=""; \
	[ -d "$(SYSTEM_DATA)/datasets/fashion-mnist" ] || need="$$need dataset-fashion-mnist"; \
	[ -f "$(SYSTEM_DATA)/wordnet/data.noun" ] || need="$$need wordnet-base"; \
	if [ -z "$$need" ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: no apt-get here:$$need not installed; the tests that need them skip"; \
	elif [ "$$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then \
	  echo "note: not root and no password-less sudo:$$need not installed; the tests that need" \
	    "them skip (sudo apt-get install$$need)"; \
	else \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	  echo "installing Debian's$$need (once; retry with make data)"; \
	  out=$$( ($$sudo apt-get install -y -qq $$need || \
	           ($$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$need)) 2>&1 ) || \
	    echo "note: apt-get could not install$$need ($$(echo "$$out" | tail -n 1)); the tests" \
	      "that need them skip"; \
	fi
	@mkdir -p $(VENV) && touch $@

data:
	@rm -f $(DATA_STAMP)
	@$(MAKE) --no-print-directory $(DATA_STAMP)

demo: $(STAMP) $(DATA_STAMP)
	$(BIN)/pyro-vi fit vae --dataset digits --epochs 100 --z-dim 10 --hidden 256 --lr 3e-3 \
		--batch-size 128 --iwae-k 1000 --out runs/demo --overwrite

test: $(STAMP) $(DATA_STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
