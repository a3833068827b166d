# Shortcuts; the README's commands (python3 dev.py ...) work without make.
.PHONY: run test bench lint
run:
	python3 dev.py run
test:
	python3 dev.py test
bench:
	python3 dev.py bench
lint:
	python3 dev.py lint
