"""Training: the typed stages (`stages/`: autoencoder, image, video), their losses (`losses.py`), the loop that
runs any stage (`trainer.py`), fine-tuning with LoRA / QLoRA (`finetune.py`, `lora.py`, `quantize.py`), and the
memory and time a step needs (`memory.py`, `throughput.py`). docs/architecture.md walks one step through them."""
