"""Training beyond one CPU for infill: Hugging Face transformers, accelerate and peft on the
dataset `infill train --export DIR` writes; the result comes back with `infill models import`."""

__version__ = "0.1.0"
