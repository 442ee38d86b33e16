"""Driver for the multi-process fine-tuning test: every rank runs finetune.sft.train_sft on the same tiny model.

Launched by tests/test_gpu_path.py as ``accelerate launch --config_file configs/accelerate/<ddp|fsdp>.yaml
--num_processes 2 --cpu ... tests/dist_sft.py MODEL OUT``.
"""

from __future__ import annotations

import json
import sys

from finetune.sft import train_sft

CONVS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                       {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(8)]

if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    cfg = {"max_length": 64, "lora": None, "dtype": "float32", "global_batch_size": 4,
           "args": {"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 1, "seed": 0,
                    "use_cpu": True, "disable_tqdm": True, "save_strategy": "no"}}
    stats = train_sft(CONVS, model, out, cfg)
    print("STATS", json.dumps(stats))
