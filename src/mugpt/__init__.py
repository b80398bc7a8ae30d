"""mugpt: GPT-2 with standard or Maximal Update Parametrization, trained with Lightning and configured with Hydra."""

__version__ = "0.1.0"
