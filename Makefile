# The README's two commands: `make demo` and `make test`. Each sets up .venv itself (idempotent).
.PHONY: setup demo test
setup:
	@./scripts/setup_env.sh
demo: setup
	@.venv/bin/mffseg demo
test: setup
	@.venv/bin/python -m pytest -q test
