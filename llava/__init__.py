"""LLaVA-1.5 runtime with LLaVA's public names, owning the language-model forward pass.

Importing the package is cheap: the model classes live in `llava.model` and are imported on use.
"""

__version__ = "0.1.0"
