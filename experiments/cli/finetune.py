"""divbench-finetune: fine-tune the study's subsets (all, or selection.only=<label>) and publish each model into the
cache, where divbench-study with the same overrides picks it up.

Main keys: the study's (experiment=<preset>, selection.only=<label>, finetune=<preset>, finetune.global_batch_size,
finetune.resume, cache_dir); -m hydra/launcher=slurm_multigpu for one SLURM job per subset with a task per GPU.

Fine-tuning on several GPUs: ``accelerate launch --config_file configs/accelerate/<ddp|zero3|fsdp>.yaml
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

from experiments.cli.command import hydra_command
from experiments.cli.study import check_config  # the same checks as the study

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


def finetune(cfg: dict[str, Any]) -> list[str]:
    """The command's work: join the SLURM tasks' process group (if any), then fine-tune."""
    export_slurm_distributed_env()
    trained = finetune_subsets(cfg)
    log.info("fine-tuned %d subset(s): %s", len(trained), trained)
    return trained


main = hydra_command("study", validate=check_config)(finetune)


if __name__ == "__main__":
    main()
