"""Step 1 of LlamaDuo: supervised fine-tuning (LoRA / QLoRA / full) with TRL. See docs/finetune.md.

python finetune.py --from-config config/demo/finetune.yaml
accelerate launch --config_file config/accelerate/multi_gpu.yaml finetune.py --from-config config/sample_config.yaml
"""
from llamaduo.cli import finetune

if __name__ == "__main__":
    finetune()
