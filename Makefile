# foundry_ext: `make demo` and `make test` work on a fresh machine with python3, pip and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := offline
export TOKENIZERS_PARALLELISM := false
# Images that set PYTHONDONTWRITEBYTECODE=1 (this one does) make every process recompile every module it
# imports: ~30 s of the ~50-s `import llmfoundry` here. Processes run by make cache their bytecode (under .venv
# and the gitignored __pycache__/ folders), so only the first one pays.
unexport PYTHONDONTWRITEBYTECODE

CORPUS_MB ?= 8
DATA      ?= data

.PHONY: venv data demo test test-fast lint schema bench bench-data-prep lock clean clean-data bench-mfu eval-data bench-gauntlet bench-models bench-mix bench-resume bench-plan bench-sft sft-data

venv: $(STAMP)

# Rebuilt from scratch whenever the lock (or the package metadata) changes; never resolves.
$(STAMP): requirements.lock pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# Regenerate the lock after editing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 -o requirements.lock

$(DATA)/corpus/manifest.json: foundry_ext/prep/corpus.py | $(STAMP)
	$(BIN)/foundry-ext corpus --out $(DATA)/corpus --size_mb $(CORPUS_MB) --overwrite

$(DATA)/tokenizer/tokenizer.json: $(DATA)/corpus/manifest.json
	$(BIN)/foundry-ext tokenizer --corpus $(DATA)/corpus --out $(DATA)/tokenizer --vocab_size 4096 --overwrite

$(DATA)/mds/stats.json: $(DATA)/tokenizer/tokenizer.json
	$(BIN)/foundry-ext prep text --input $(DATA)/corpus --tokenizer $(DATA)/tokenizer \
		--out $(DATA)/mds --concat_tokens 128 --overwrite

data: $(DATA)/mds/stats.json

# Starter gauntlet task files: generated from the corpus's held-out split (deterministic, seconds).
$(DATA)/eval/starter/manifest.json: $(DATA)/corpus/manifest.json foundry_ext/gauntlet/starter.py
	$(BIN)/foundry-ext eval-data --corpus $(DATA)/corpus --out $(DATA)/eval/starter

eval-data: $(DATA)/eval/starter/manifest.json

# The ladder on CPU (docs/finetune.md): pretrain a tiny Llama-architecture model on a curriculum data mix ->
# a verified HF folder -> starter gauntlet -> SFT of that HF folder on the generated instruction set -> a verified
# HF folder -> held-out exact match (gauntlet) and format-following, before vs after SFT.
SFT_BATCHES ?= 60
demo: $(STAMP) data eval-data sft-data
	$(BIN)/python scripts/train.py yamls/pretrain/tiny-mix-cpu.yaml run_name=demo
	$(BIN)/foundry-ext report runs/demo
	$(BIN)/foundry-ext mixplot runs/demo
	$(BIN)/foundry-ext export runs/demo runs/demo/hf --overwrite
	$(BIN)/python scripts/eval.py yamls/eval/starter.yaml 'model={hf_path: runs/demo/hf}'
	$(BIN)/python scripts/train.py yamls/finetune/sft-hf-cpu.yaml run_name=demo-sft variables.model_dir=runs/demo/hf \
		max_duration=$(SFT_BATCHES)ba eval_interval=$(SFT_BATCHES)ba eval_first=true optimizer.lr=3.0e-3 scheduler.t_warmup=6ba
	$(BIN)/foundry-ext export runs/demo-sft runs/demo-sft/hf --overwrite
	$(BIN)/python scripts/eval.py yamls/eval/sft.yaml
	$(BIN)/foundry-ext sft-eval --model runs/demo-sft/hf --compare runs/demo/hf --out runs/demo-sft/sft_eval.json
	$(BIN)/foundry-ext report runs/demo-sft
	@echo "demo finished: pretraining runs/demo/report.md (loss curve, mix weights runs/demo/mix_weights.png),"
	@echo "               starter gauntlet runs/demo/gauntlet/report.md, HF model runs/demo/hf;"
	@echo "               SFT runs/demo-sft/report.md (held-out exact match and format, before/after),"
	@echo "               gauntlet before/after runs/demo-sft/gauntlet/report.md, HF model runs/demo-sft/hf"
	@echo "               (re-running the demo resumes: finished runs are not redone)"

test: lint
	$(BIN)/python -m pytest -q

# Lint (ruff: pycodestyle, pyflakes, import order, bugbear) and types (mypy on foundry_ext/); part of `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m foundry_ext.config.schema_gen --check

# Unit tests only (skips the end-to-end training runs).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Regenerate foundry_ext/config/schema.py from the installed LLM Foundry's TrainConfig / MPTConfig.
schema: $(STAMP)
	$(BIN)/python -m foundry_ext.config.schema_gen

# data_prep throughput vs LLM Foundry's convert_text_to_mds (same run); BENCH_MB=20 for a quick one.
BENCH_MB ?= 100
bench: bench-data-prep
bench-data-prep: $(STAMP) $(DATA)/tokenizer/tokenizer.json
	$(BIN)/python bench/data_prep.py --size_mb $(BENCH_MB) --tokenizer $(DATA)/tokenizer
# MFU callback overhead as a fraction of step time (CPU, same run).
bench-mfu: $(STAMP)
	$(BIN)/python bench/mfu_overhead.py
bench: bench-mfu
# Our gauntlet scorer vs LLM Foundry's ICL evaluator on real tasks from ../shared/eval_data.
bench-gauntlet: $(STAMP) data
	$(BIN)/python bench/gauntlet_vs_foundry.py --limit 200
	$(BIN)/python bench/gauntlet_sharding.py --ranks 2

bench: bench-gauntlet
# Attention/MoE benchmarks (pure torch): MFU of ~1B dense / MoE models (SKIP without CUDA), MoE vs dense FFN.
bench-models: $(STAMP)
	$(BIN)/python bench/mfu_model.py
	$(BIN)/python bench/moe_vs_dense.py

bench: bench-models
bench: bench-mix

# Planner: predicted vs measured peak memory of real training steps (CPU; --device cuda on a GPU), and
# LLM Foundry's published MPT runs judged to fit where they ran.
bench-plan: $(STAMP)
	$(BIN)/python bench/plan_published.py
	$(BIN)/python bench/plan_accuracy.py
bench: bench-plan

bench-mix: $(STAMP) data
	$(BIN)/python bench/mixing.py

# Kill / SIGTERM a tiny run at fixed points, re-run it, compare with an uninterrupted run (docs/reliability.md).
bench: bench-resume
bench-resume: $(STAMP)
	$(BIN)/python bench/resume.py

# SFT: our sft loader (packing, per-example masks) + foundry_hf_causal_lm vs LLM Foundry's finetuning loader
# + hf_causal_lm on the same model, data and batch (trained tokens/s, padding fraction).
bench-sft: $(STAMP) $(DATA)/tokenizer/tokenizer.json
	$(BIN)/python bench/sft.py
bench: bench-sft

# The instruction set for SFT (records questions, word problems) with its held-out gauntlet tasks (seconds).
$(DATA)/sft/manifest.json: $(DATA)/tokenizer/tokenizer.json foundry_ext/finetune/instructions.py
	$(BIN)/foundry-ext sft-data --corpus $(DATA)/corpus --tokenizer $(DATA)/tokenizer --out $(DATA)/sft --overwrite

sft-data: $(DATA)/sft/manifest.json

clean-data:
	rm -rf $(DATA) runs

clean: clean-data
	rm -rf $(VENV)

# Export time and peak memory (demo model and ~125M): foundry-ext export vs torch.load + save_pretrained, same run.
.PHONY: bench-export
bench-export: $(STAMP) data
	$(BIN)/python bench/export.py
bench: bench-export
