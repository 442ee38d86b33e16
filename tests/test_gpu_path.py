"""The paper-scale (GPU) path, tested on the CPU: trainer configs of every fine-tuning preset, accelerate configs,
2-process gloo fine-tuning, chunked resumable embedding, stop_after, preflight and divbench-doctor, dry runs of every
preset with the SLURM launcher and no keys, and no float64 copies of the reference."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from divcore.errors import InputError
from eval.generation import adapter_rank, lora_rank_limit
from experiments.cli.study import run
from experiments.embedding.backends import LastTokenEncoder, embed_chunked, embed_texts
from experiments.engine.config import CONFIG_DIR, PROJECT_ROOT
from finetune.sft import sft_config
from tests.helpers import CliResult, compose, run_cli
from tests.test_study_e2e import _artifacts, _compose, _tiny_overrides

FINETUNE_PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "finetune").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
KEY_VARS = ("OPENAI_API_KEY", "VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


@pytest.mark.parametrize("preset", FINETUNE_PRESETS)
@pytest.mark.parametrize("processes", [1, 8])
def test_sft_config_for_every_finetune_preset(preset, processes, tmp_path):
    ft = compose("study", [f"finetune={preset}"])["finetune"]
    # transformers refuses bf16 without a bf16 GPU unless use_cpu: the only change needed to build it here.
    args = sft_config(ft | {"args": ft["args"] | {"use_cpu": True}}, tmp_path, processes=processes)
    assert args.output_dir == str(tmp_path) and args.max_length == ft["max_length"]
    if ft.get("global_batch_size"):
        assert processes * args.per_device_train_batch_size * args.gradient_accumulation_steps == 128
    if ft["base_model"].startswith(("meta-llama/", "Qwen/")):  # the 7-8B presets
        assert args.model_init_kwargs["dtype"] == "bfloat16" and args.bf16
        assert args.warmup_steps == pytest.approx(0.03)
    if processes > 1:
        assert args.model_init_kwargs["device_map"] is None


def test_sft_config_rejects_removed_arguments_and_uneven_batches(tmp_path):
    base = {"max_length": 64, "args": {"per_device_train_batch_size": 4, "use_cpu": True}}
    with pytest.raises(InputError, match="'warmup_ratio': removed in transformers 5; use warmup_steps"):
        sft_config(base | {"args": {"warmup_ratio": 0.03}}, tmp_path)
    with pytest.raises(InputError, match="not a multiple of world size 8 x per_device_train_batch_size 4"):
        sft_config(base | {"global_batch_size": 100}, tmp_path, processes=8)
    with pytest.raises(InputError, match="not both"):
        sft_config(base | {"global_batch_size": 32, "args": base["args"] | {"gradient_accumulation_steps": 2}},
                   tmp_path)
    with pytest.raises(InputError, match="remove device_map"):
        sft_config(base | {"args": base["args"] | {"model_init_kwargs": {"device_map": "auto"}}}, tmp_path,
                   processes=2)
    assert sft_config(base | {"global_batch_size": 32}, tmp_path, processes=2).gradient_accumulation_steps == 4


def test_accelerate_configs_parse_and_save_loadable_models():
    from accelerate.commands.config.config_args import ClusterConfig

    configs = {p.stem: ClusterConfig.from_yaml_file(p) for p in (Path(CONFIG_DIR) / "accelerate").glob("*.yaml")}
    assert set(configs) == {"ddp", "fsdp", "zero3"}
    assert {c.distributed_type.value for c in configs.values()} == {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert all(c.mixed_precision == "bf16" and c.num_processes == 8 for c in configs.values())
    assert configs["fsdp"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert configs["zero3"].deepspeed_config["zero3_save_16bit_model"] is True


def _free_port() -> str:
    """A free local port for the process group (29500, torchrun's default, may be taken on a shared machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _accelerate(config: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            f"{CONFIG_DIR}/accelerate/{config}.yaml", "--num_processes", "2", "--mixed_precision", "no",
            "--main_process_port", _free_port()]


def _launch(config: str, model: str, out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.run([*_accelerate(config), str(PROJECT_ROOT / "tests" / "dist_sft.py"), model, str(out)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("STATS ")]


@pytest.mark.slow
def test_two_process_gloo_fine_tuning_saves_a_model_that_loads(tiny_model, tmp_path):
    """accelerate launch with the project's DDP config, 2 CPU processes (gloo): one model, global batch kept."""
    from transformers import AutoModelForCausalLM

    stats = _launch("ddp", tiny_model, tmp_path / "ddp")
    assert len(stats) == 2 and {s["world_size"] for s in stats} == {2}
    assert stats[0]["gradient_accumulation_steps"] == 2 and stats[0]["effective_batch_size"] == 4
    setup = json.loads((tmp_path / "ddp" / "training_setup.json").read_text())
    assert setup["world_size"] == 2 and setup["effective_batch_size"] == 4
    # 8 conversations, 1 per device: each rank trains on its own 4, none on both
    assert setup["examples_per_rank"] == [4, 4] and setup["examples_on_several_ranks"] == 0
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert set(tuned) == set(base) and any(not (tuned[k] == base[k]).all() for k in base)


@pytest.mark.slow
def test_fsdp_launch_exports_full_state_dict(tmp_path):
    """accelerate translates fsdp.yaml into the environment its FSDP plugin reads (FSDP itself needs GPUs:
    accelerate enables it only for accelerator process groups, so the CPU test stops at the launcher)."""
    probe = tmp_path / "probe.py"  # each rank writes its own file: two ranks' stdout lines can interleave
    probe.write_text("import json, os, sys\nopen(os.path.join(sys.argv[1], 'env-' + os.environ['RANK'] + '.json'), "
                     "'w').write(json.dumps({k: v for k, v in os.environ.items() "
                     "if k.startswith(('FSDP_', 'ACCELERATE_USE_FSDP', 'WORLD_SIZE'))}))\n")
    proc = subprocess.run([*_accelerate("fsdp"), str(probe), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    envs = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("env-*.json"))]
    assert proc.returncode == 0 and len(envs) == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert all(e["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT" and e["ACCELERATE_USE_FSDP"] == "true"
               and e["WORLD_SIZE"] == "2" for e in envs)


TEXTS = [f"Text number {i}: " + "word " * (i % 7) for i in range(23)]


@pytest.mark.slow
def test_chunked_embedding_resumes_after_a_kill(tiny_model, tmp_path):
    whole = embed_texts(TEXTS, tiny_model, max_length=16, chunk_size=5)
    encoder = LastTokenEncoder(tiny_model, max_length=16)
    calls: list[int] = []

    def dies_after_two_chunks(texts):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(len(texts))
        return encoder(texts)

    with pytest.raises(KeyboardInterrupt):
        embed_chunked(TEXTS, dies_after_two_chunks, tmp_path / "w", chunk_size=5)
    assert json.loads((tmp_path / "w" / "progress.json").read_text())["rows_done"] == 10
    resumed: list[int] = []
    path = embed_chunked(TEXTS, lambda t: resumed.append(len(t)) or encoder(t), tmp_path / "w", chunk_size=5)
    assert resumed == [5, 5, 3]  # only the unfinished chunks
    got = np.load(path)
    assert got.dtype == np.float32 and got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_chunked_embedding_holds_one_chunk_in_memory(tmp_path):
    """Peak traced allocation is about one chunk, whatever the number of rows; the rows go to a float32 .npy."""
    dim, chunk = 256, 500

    def encode(texts):  # a deterministic function of the texts, one row each
        seeds = [int(t) for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(dim, dtype=np.float32) for s in seeds])

    texts = [str(i) for i in range(20_000)]
    tracemalloc.start()
    path = embed_chunked(texts, encode, tmp_path / "w", chunk_size=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = np.load(path, mmap_mode="r")
    assert out.shape == (20_000, dim) and out.dtype == np.float32
    assert peak < 4 * chunk * dim * 4 < out.nbytes / 5
    np.testing.assert_array_equal(out[12_345], encode(["12345"])[0])


@pytest.mark.slow
def test_stop_after_runs_up_to_the_stage(tiny_model, tmp_path):
    overrides = _tiny_overrides(tmp_path, tiny_model) + ["logger.enabled=false", "selection.only=random"]
    result = run(_compose(overrides + ["stop_after=embed"]))
    assert result["stopped_after"] == "embed"
    assert {k.split("/")[0] for k in _artifacts(tmp_path / "cache")} == {"pool", "embed"}
    run(_compose(overrides + ["stop_after=signals"]))
    assert {k.split("/")[0] for k in _artifacts(tmp_path / "cache")} == {"pool", "embed", "signals"}
    run(_compose(overrides + ["stop_after=metrics"]))
    assert {k.split("/")[0] for k in _artifacts(tmp_path / "cache")} == {"pool", "embed", "signals", "subset",
                                                                          "metrics"}
    assert not list((tmp_path / "results").glob("*.csv"))  # no report: stopped before the gather
    with pytest.raises(InputError, match="stop_after='embedding' is not a stage"):
        run(_compose(overrides + ["stop_after=embedding"]))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes_and_dry_runs_with_slurm_and_no_keys(experiment, tmp_path, monkeypatch):
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token either
    launcher = "slurm_gpu" if experiment.startswith("paper") else "local"
    cfg = compose("study", [f"experiment={experiment}", f"hydra/launcher={launcher}", f"cache_dir={tmp_path}/c",
                            f"results_dir={tmp_path}/r", "dry_run=true"], resolve=False, hydra=True)
    assert "submitit" in cfg.hydra.launcher._target_
    with open_dict(cfg):
        del cfg["hydra"]
    table = run(cfg)["dry_run"]
    assert len(table) >= 1 and set(table.loc[table["stage"] == "embed", "status"]) == {"to run"}
    assert (tmp_path / "r" / "plan.csv").exists() and not (tmp_path / "c").exists()  # only the plan is written


def _cli(*args: str, tmp: Path, command: str = "study") -> CliResult:
    """A command with no key variable set and an empty Hugging Face home (no stored token)."""
    return run_cli(command, f"cache_dir={tmp}/c", f"results_dir={tmp}/r", "logger=none", f"hydra.run.dir={tmp}/o",
                   *args, env=dict.fromkeys(KEY_VARS) | {"HF_HOME": str(tmp / "hf")}, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["device=cuda"], "torch sees no CUDA GPU here"),
    (["embed.model=meta-llama/Meta-Llama-3-8B"], "are gated on the Hugging Face hub and no token is set"),
])
def test_preflight_fails_before_writing_anything(tmp_path, args, message):
    proc = _cli(*args, tmp=tmp_path)
    assert proc.code == 2, proc.output[-2000:]
    assert message in proc.output and "Traceback" not in proc.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_doctor_names_what_the_paper_preset_lacks_here(tmp_path):
    proc = _cli("experiment=paper_llama3", tmp=tmp_path, command="doctor")
    out = proc.output
    assert proc.code == 2, out[-2000:]
    assert "missing GPUs: this preset needs CUDA" in out
    assert "missing HF token: ['meta-llama/Meta-Llama-3-8B'] are gated" in out
    assert "missing judge key: export OPENAI_API_KEY" in out
    assert "torch" in out and "faiss" in out and "free disk" in out
    assert re.search(r"\] - \d+ thing\(s\) missing: this preset cannot run here", out) and not (tmp_path / "c").exists()
    demo = _cli("experiment=demo", tmp=tmp_path, command="doctor")
    assert demo.code == 0, demo.output[-2000:]
    assert "everything this preset needs is here" in demo.output


def test_adapter_rank_sets_and_bounds_max_lora_rank(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64, "rank_pattern": {"q_proj": 8}}))
    assert adapter_rank(str(tmp_path)) == 64 and lora_rank_limit(str(tmp_path), None) == 64
    with pytest.raises(InputError, match="rank 64, above eval.generation.vllm.max_lora_rank=16"):
        lora_rank_limit(str(tmp_path), 16)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 40}))
    assert lora_rank_limit(str(tmp_path), None) == 64  # the smallest rank vLLM accepts that holds r=40
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(InputError, match="backend=transformers"):
        lora_rank_limit(str(tmp_path), None)


def test_reference_metrics_and_selectors_make_no_float64_copy():
    import selection
    from metrics.baselines import facility_location, partition_entropy
    from metrics.novelsum import novelsum

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40_000, 128), dtype=np.float32)
    sub = ref[:200]
    pool = selection.PoolInputs(size=len(ref), embeddings=ref)
    for fn in (lambda: facility_location(sub, ref), lambda: partition_entropy(sub, ref, n_clusters=20),
               lambda: novelsum(sub, ref), lambda: selection.select("farthest", pool, 10, 0)):
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # A float64 copy is 2x the float32 reference and its normalised rows another 2x (the old unit-row code);
        # what remains is float32 work (NovelSum's de-duplicated copy of the reference).
        assert peak < 2.1 * ref.nbytes, peak / ref.nbytes


def test_doctor_accepts_exactly_the_vllm_line_the_gpu_extra_installs():
    """divbench-doctor's vLLM check and the `gpu` extra's pin are written in two places: they must agree, and the
    torch the extra is built against must be the torch the project pins."""
    import tomllib

    from packaging.requirements import Requirement

    from experiments.engine.environment import VLLM_LINE

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    vllm = next(Requirement(d) for d in project["optional-dependencies"]["gpu"] if d.startswith("vllm"))
    for candidate in ("0.31.9", "0.32.0", "0.32.7", "0.33.0", "1.0.0"):
        assert vllm.specifier.contains(candidate) == candidate.startswith(VLLM_LINE), candidate
    torch = next(Requirement(d) for d in project["dependencies"] if d.startswith("torch"))
    assert torch.specifier.contains("2.13.0") and not torch.specifier.contains("2.12.0")
    assert not any(Requirement(d).name.startswith("faiss") for d in project["dependencies"])  # an explicit extra


@pytest.mark.slow
def test_gpu_acceptance_reports_skips_with_reasons_on_a_cpu_machine(tmp_path):
    script = PROJECT_ROOT / "benchmarks" / "gpu_acceptance.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    bare = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "t.md")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert bare.returncode == 0, bare.stderr[-2000:]
    rows = [line.split(" | ") for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 6 and all(r[1] == "skipped" and len(r[3]) > 10 for r in rows)  # never passed, with reason
    cpu = subprocess.run([sys.executable, str(script), "--device", "cpu", "--parts", "novelselect,novelsum,vllm_embed",
                          "--out", str(tmp_path / "c.md")], capture_output=True, text=True, timeout=300, env=env)
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    status = {r.split(" | ")[0][2:]: r.split(" | ")[1] for r in (tmp_path / "c.md").read_text().splitlines()
              if r.startswith("| ") and "---" not in r and not r.startswith("| part")}
    assert status == {"novelselect": "pass", "novelsum": "pass", "vllm_embed": "skipped"}
    wrong = subprocess.run([sys.executable, str(script), "--device", "cuda"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert wrong.returncode == 2 and "no CUDA GPU" in wrong.stderr
