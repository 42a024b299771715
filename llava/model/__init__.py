"""LLaVA-1.5 model classes."""

from llava.model.language_model.llava_llama import (
    CausalLMOutput,
    LlamaModel,
    LlavaConfig,
    LlavaLlamaForCausalLM,
)

__all__ = ["CausalLMOutput", "LlamaModel", "LlavaConfig", "LlavaLlamaForCausalLM"]
