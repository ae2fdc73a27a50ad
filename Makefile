# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# torch==2.13.0 is installed first: here it is a CPU build on local disk (fast); the project itself
# only asks for torch>=2.4,<3, which GPU users satisfy with their CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mm4ke-ray demo

test: install lint
	$(PY) -m pytest -m "not gpu" -q --durations=30 -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check mm4ke_ray tests benchmarks

.PHONY: install demo test lint
