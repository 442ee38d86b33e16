"""Fine-tuning on several GPUs: ``accelerate launch --config_file configs/accelerate/<ddp|zero3|fsdp>.yaml
-m experiments.cli.finetune experiment=paper_llama3 selection.only=kmeans``.

Every process composes the same study config. The main process prepares (or loads from the cache) the pool,
embeddings and subset first; the others then read them from the cache. All processes train together through
``SFTTrainer`` (accelerate provides DDP / ZeRO-3 / FSDP), checkpointing into a directory shared by all ranks,
and a relaunch after a kill resumes from the newest checkpoint. The main process then publishes the model into
the artifact store, where the study (``divbench-study`` with the same overrides) finds it and goes on to
evaluation. On one process (plain ``python -m``) the same code trains on one device.

Inside one SLURM job with one task per GPU (``hydra/launcher=slurm_multigpu``: ``tasks_per_node`` = GPUs), each task
exports submitit's torch distributed environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) before training, so the
tasks form one DDP process group without ``accelerate launch``:
``divbench-finetune -m experiment=paper_llama3 hydra/launcher=slurm_multigpu selection.only=kmeans``.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR
from experiments.engine.pipeline import check_study_config as check_config

log = logging.getLogger("divbench")


def finetune_subsets(cfg: dict[str, Any]) -> list[str]:
    """Fine-tune every subset of the plan (or of ``selection.only``) that is not in the cache yet; returns the
    ``<label>-s<seed>`` names (``-t<training seed>`` with ``finetune.seeds``) of those it trained."""
    from accelerate import PartialState

    from divcore.io import remove_stale_temps
    from experiments.engine.pipeline import (
        SubsetRunner,
        embed_stage,
        finetune_config,
        pool_stage,
        replicate_entries,
        replicate_name,
        selected_entries,
        stage_specs,
        subset_plan,
    )
    from experiments.engine.stages import FinetuneOutput
    from experiments.engine.store import LOCK_TIMEOUT_S, ArtifactStore
    from finetune.sft import train_sft

    state = PartialState()
    if state.is_main_process:
        remove_stale_temps(cfg["cache_dir"])
    store = ArtifactStore(cfg["cache_dir"], cfg.get("cache_lock_timeout_s", LOCK_TIMEOUT_S))
    entries = replicate_entries(selected_entries(subset_plan(cfg["selection"]), cfg["selection"].get("only")), cfg)
    cfg = cfg | {"logger": cfg["logger"] | {"enabled": cfg["logger"].get("enabled", True) and state.is_main_process}}
    specs = stage_specs(cfg)
    with state.main_process_first():
        convs = pool_stage(store, specs["pool"], cfg["pool"])
        emb = embed_stage(store, specs["embed"], convs, cfg["embed"], cfg["cache_dir"], cfg["pool"].get("path"))
        runner = SubsetRunner(cfg, store, convs, emb, {})
        base = runner.base_model
        subsets = {(e["label"], e["seed"]): runner.subset_rows(e, stage_specs(cfg, e))[1] for e in entries}
    trained = []
    for entry in entries:
        entry_specs = stage_specs(cfg, entry)
        if store.ready("finetune", entry_specs["finetune"]):
            continue
        ckpt = runner.checkpoint_dir(entry_specs, force=True)
        final = ckpt / "final"
        stats = train_sft(subsets[entry["label"], entry["seed"]], base, final, finetune_config(cfg, entry),
                          checkpoint_dir=ckpt)
        state.wait_for_everyone()
        if state.is_main_process:
            with store.build("finetune", entry_specs["finetune"]) as tmp:
                if tmp is not None:  # else a twin job published the same model first; the first writer wins
                    shutil.move(str(final), FinetuneOutput.model(tmp))
                    FinetuneOutput.write_stats(tmp, stats)  # world size, effective batch
            runner.drop_checkpoints(ckpt)
        state.wait_for_everyone()
        trained.append(replicate_name(entry))
    return trained


def export_slurm_distributed_env() -> bool:
    """In a SLURM job of several tasks not started by torchrun/accelerate, export the variables torch.distributed's
    env:// initialisation reads, through submitit (the launcher's own library). Every task keeps seeing all the
    node's GPUs; the trainer picks ``cuda:LOCAL_RANK``. Returns whether it exported."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("SLURM task %d of %d joins the process group at %s:%d", env.rank, env.world_size, env.master_addr,
             env.master_port)
    return True


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="study")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard

    export_slurm_distributed_env()
    trained = guard(lambda: finetune_subsets(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)))
    log.info("fine-tuned %d subset(s): %s", len(trained), trained)


def main() -> None:
    """``divbench-finetune``: the same checks as the study before Hydra writes anything."""
    from experiments.cli.command import preflight

    preflight("study", validate=check_config)
    _hydra_main()


if __name__ == "__main__":
    main()
