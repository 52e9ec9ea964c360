# Two entry points a fresh machine needs: `make quickstart` and `make test`.
# Both create .venv and install the package (with test extras) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: quickstart test benchmark notebooks android clean

# Monocypher's C files (the microcontroller recipe's Ed25519, pinned by hash)
# come from its source release on PyPI, as the Python packages do.
$(STAMP): setup.cfg pyproject.toml tflite_edge/c/ed25519/fetch_monocypher.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,benchmarks]'
	# NNCodec's coder, for the codec comparison (built from source; its declared
	# dependencies pull PyTorch, which the coder itself does not use).
	$(BIN)/python -m pip install -q --no-deps nncodec==2.1.3
	$(BIN)/python tflite_edge/c/ed25519/fetch_monocypher.py $(VENV)/monocypher
	touch $(STAMP)

# --overwrite: running the quick start again replaces its run folder.
quickstart: $(STAMP)
	$(BIN)/python -m tf_dpu.train --flagfile=flags/quickstart.flags --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Runs both notebooks top to bottom and saves them with their outputs.
notebooks: $(STAMP)
	$(BIN)/python colab/refresh.py

# The JVM patch applier for Android apps: tflite_edge/android/build/dpu-patch.jar,
# built offline with Maven (its JUnit tests run too).
android:
	mvn -o -q -f tflite_edge/android/pom.xml package

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks --quick --out=benchmarks/results/quick.json

clean:
	rm -rf $(VENV) runs build *.egg-info tflite_edge/android/build
