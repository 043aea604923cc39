"""sanatool: model surgery for SANA linear diffusion transformers."""

__version__ = "0.1.0"
