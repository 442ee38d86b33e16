"""Fine-tuning on several GPUs: ``accelerate launch --config_file configs/accelerate/<ddp|zero3|fsdp>.yaml
-m experiments.cli.finetune experiment=paper_llama3 selection.only=kmeans``.

Every process composes the same study config and runs the engine (``experiments.engine.pipeline.run``) up to the
finetune stage. The main process builds (or loads from the cache) the pool, embeddings, pool signals, subsets and
their metrics first, with the study's checks; the others then read them from the cache. The finetune stage is
collective: all processes train together through ``SFTTrainer`` (accelerate provides DDP / ZeRO-3 / FSDP),
checkpointing into a directory shared by all ranks, and a relaunch after a kill resumes from the newest
checkpoint. The main process then publishes the model into the artifact store, where the study
(``divbench-study`` with the same overrides) finds it and goes on to evaluation. On one process (plain
``python -m``) the same code trains on one device.

Inside one SLURM job with one task per GPU (``hydra/launcher=slurm_multigpu``: ``tasks_per_node`` = GPUs), each task
exports submitit's torch distributed environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) before training, so the
tasks form one DDP process group without ``accelerate launch``:
``divbench-finetune -m experiment=paper_llama3 hydra/launcher=slurm_multigpu selection.only=kmeans``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR
from experiments.engine.pipeline import check_study_config as check_config

log = logging.getLogger("divbench")


def finetune_subsets(cfg: dict[str, Any]) -> list[str]:
    """Fine-tune every subset of the plan (or of ``selection.only``) that is not in the cache yet: the engine up to
    the finetune stage, with the study's checks; returns the ``<label>-s<seed>`` names (``-t<training seed>`` with
    ``finetune.seeds``) of those it trained. Training always checkpoints (``finetune.resume``), so a relaunch
    after a kill resumes."""
    from experiments.engine.pipeline import run, study_entries

    cfg = cfg | {"finetune": cfg["finetune"] | {"resume": True}}
    done = run(cfg, until="finetune", entries=study_entries(cfg))
    return [name for name, stage in done.built if stage == "finetune"]


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
