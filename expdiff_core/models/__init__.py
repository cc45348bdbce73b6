"""Models, diffusers-style: a config dataclass + ``save_pretrained``/``from_pretrained`` with safetensors."""
