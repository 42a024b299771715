"""LlavaLlamaForCausalLM: LLaVA-1.5's and LLaVA-1.6's model class, on our own Llama forward pass (a Mistral
language model runs on it too: the same decoder, see `LlavaConfig.sliding_window`).

`forward` returns logits over the spliced sequence; `generate` returns only the new token ids (as LLaVA's
`generate` from embeddings does) and stops at EOS. Visual-token pruning is configured with `set_prune` (or
`load_pretrained_model(..., prune=...)`) and applied inside `LlamaModel.forward` during prefill.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llava.model.language_model.configuration_llava import LlavaConfig
from llava.model.language_model.modeling_llama import KVCache, LlamaModel
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel, Splice, projector_dtype

__all__ = ["LlavaConfig", "LlamaModel", "LlavaLlamaModel", "LlavaLlamaForCausalLM", "CausalLMOutput"]


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    past_key_values: KVCache | None = None
    position_ids: torch.Tensor | None = None  # positions of the returned logits (gapped after pruning)


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    def __init__(self, config: LlavaConfig):
        LlamaModel.__init__(self, config)
        self.init_vision_modules(config)
        self.prune = None  # PruneConfig or None
        self.prune_trace: list = []  # filled after each prefill: per row, per image, the pruning record

    @property
    def mm_projector_dtype(self) -> torch.dtype:
        return projector_dtype(self.mm_projector)


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, nn.Module):
    config_class = LlavaConfig

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.model = LlavaLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    # -- pruning -------------------------------------------------------------------------------------------

    def set_prune(self, cfg=None) -> None:
        """Turn visual-token pruning on with a PruneConfig, or off with None (vanilla LLaVA)."""
        if cfg is not None:
            from entropyprune.hook import check_prune_config

            tower = self.get_vision_tower()
            # without a tower (benchmarks feed projected features) budgets are checked against the
            # feature count they set in ``num_visual_tokens`` (LLaVA-1.5's 576 when unset)
            visual = tower.num_patches if tower is not None else getattr(self, "num_visual_tokens", None)
            per_view = False  # a vision-stage method that prunes each view: its budget is per view (576)
            if cfg.stage == "vision" and self.multi_view:
                per_view = self._check_vision_stage_anyres(cfg) != "merged"
            if tower is not None and getattr(self.config, "image_aspect_ratio", None) == "anyres" and not per_view:
                # V varies per image (each is budgeted by its own V at run time); checked here for a square
                # image of the tower's size
                from llava.anyres import anyres_num_tokens

                side = tower.config.image_size
                visual = anyres_num_tokens((side, side), self.config, tower.num_patches_per_side, side)
                if cfg.caps(visual):  # an image whose V is below the budget keeps all its tokens (capped)
                    from llava.anyres import anyres_max_tokens

                    visual = anyres_max_tokens(self.config, tower.num_patches_per_side, side)
                    if cfg.caps(visual):
                        from entropyprune.config import FLAGS

                        flag = FLAGS["keep"] if cfg.keep is not None else FLAGS["avg_tokens"]
                        given = cfg.keep if cfg.keep is not None else cfg.avg_tokens
                        raise ValueError(f"{flag} {given} is more than the {visual} visual tokens of the largest "
                                         "image this checkpoint's pinpoints give, so it would prune no image: use "
                                         f"{flag} <= {visual}")
            check_prune_config(cfg, self.config, visual)
            if cfg.stage == "vision":
                self._check_vision_stage(cfg, tower)
        self.model.prune = cfg
        self.model.prune_trace = []

    def _check_vision_stage_anyres(self, cfg) -> str:
        """LLaVA-1.6: the method's official LLaVA-NeXT path (entropyprune.methods.ANYRES_LAYOUTS), or one line
        saying why it is refused."""
        from entropyprune.methods import get_spec

        spec = get_spec(cfg.method)
        if spec.anyres is None:
            raise ValueError(f"--prune-method {cfg.method!r} at the vision stage is not supported for LLaVA-1.6 "
                             "(anyres) checkpoints: its official code has no LLaVA-NeXT path (docs/LLaVA-NeXT.md); "
                             "use cdpruner, divprune, vispruner, visionzip or a language-model method")
        if cfg.keep_newlines:
            raise ValueError(f"--prune-keep-newlines is for language-model methods; {cfg.method!r} treats LLaVA-1.6's "
                             "newline tokens as its official code does (docs/LLaVA-NeXT.md): drop the flag")
        return spec.anyres(cfg.method_options(), getattr(self.config, "mm_patch_merge_type", "flat"))

    def _check_vision_stage(self, cfg, tower) -> None:
        """A vision-stage method needs the tower's patch features (and, for some, CLIP's text tower)."""
        from entropyprune.methods import get_spec

        if tower is None:
            raise ValueError(f"--prune-method {cfg.method!r} prunes the vision tower's tokens; this model has none")
        if tower.select_feature != "patch":
            raise ValueError(f"--prune-method {cfg.method!r} needs mm_vision_select_feature 'patch' (the CLS token "
                             f"is not a visual token to prune); this model uses {tower.select_feature!r}")
        if "clip_text" in get_spec(cfg.method).needs:
            from llava.model.multimodal_encoder.clip_encoder import load_clip_text

            name = cfg.method_options().clip_text_tower or tower.vision_tower_name
            if getattr(self.model, "clip_text_name", None) != name:
                self.model.clip_text = load_clip_text(name, tower=tower, device=tower.device)
                self.model.clip_text_name = name

    def _prune_hook(self, splice: Splice | None):
        self.model.prune_trace = []
        if splice is not None and splice.vision_trace is not None:  # pruned before the language model
            self.model.prune_trace = splice.vision_trace
            return None
        if self.model.prune is None or splice is None or not any(splice.image_spans):
            if splice is not None:
                self.model.prune_trace = [[] for _ in splice.image_spans]
            return None
        from entropyprune.hook import PruneHook

        return PruneHook(self.model.prune, splice, self.config, trace=self.model.prune_trace)

    # -- forward -------------------------------------------------------------------------------------------

    def _check_window(self, tokens: int, what: str) -> None:
        """A sliding attention window W equals full attention only over at most W tokens (see LlavaConfig)."""
        window = getattr(self.config, "sliding_window", None)
        if window is not None and tokens > window:
            raise ValueError(f"{what} is {tokens} tokens but this model's sliding_window is {window}: sliding-window "
                             "attention is not implemented; shorten the prompt or --max-new-tokens to fit the window")

    def _prefill_inputs(self, input_ids, images, attention_mask, position_ids, inputs_embeds, labels,
                        padding_side=None, texts=None, image_sizes=None):
        if inputs_embeds is not None:
            b, t = inputs_embeds.shape[:2]
            mask = attention_mask.bool() if attention_mask is not None else None
            if position_ids is None:
                position_ids = _positions_from_mask(mask, b, t, inputs_embeds.device)
            self._check_window(t, "the sequence")
            return inputs_embeds, mask, position_ids, labels, None
        if input_ids is None:
            raise ValueError("pass input_ids or inputs_embeds")
        sp = self.splice_multimodal(input_ids, images, attention_mask, labels, padding_side=padding_side, texts=texts,
                                    image_sizes=image_sizes)
        mask = sp.attention_mask if (attention_mask is not None or sp.has_padding) else None
        pos = position_ids.to(sp.position_ids.device) if position_ids is not None else sp.position_ids
        return sp.inputs_embeds, mask, pos, sp.labels, sp

    def forward(self, input_ids=None, images=None, image_sizes=None, attention_mask=None, position_ids=None,
                inputs_embeds=None, past_key_values: KVCache | None = None, labels=None, use_cache=False,
                return_dict=True, texts=None, **kwargs) -> CausalLMOutput:
        """Logits over the whole (spliced) sequence. With pruning on, over the kept tokens only.

        A call with `past_key_values` holding a cache is a decode step: `input_ids` [B, T] are new text tokens.
        `texts`: each prompt's instruction, for vision-stage methods that read it (CDPruner).
        """
        if past_key_values is not None and not past_key_values.empty:
            x = self.model.embed_tokens(input_ids)
            t = input_ids.shape[1]
            self._check_window(past_key_values.segments[0].length + t, "the sequence with its cache")
            pos = position_ids
            if pos is None:
                pos = past_key_values.next_position[:, None] + torch.arange(t, device=x.device)[None]
            hidden, pos = self.model(x, pos, None, past_key_values)
            return CausalLMOutput(self.lm_head(hidden).float(), None, past_key_values, pos)

        embeds, mask, pos, labels, splice = self._prefill_inputs(
            input_ids, images, attention_mask, position_ids, inputs_embeds, labels, texts=texts,
            image_sizes=image_sizes)
        if splice is not None:
            self._check_window(max(splice.lengths), "the prompt")
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(len(self.model.layers))
        hidden, pos = self.model(embeds, pos, mask, cache, self._prune_hook(splice), has_padding=_padded(splice))
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("labels cannot be scored with pruning on: pruned positions have no logits")
            targets = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets, ignore_index=-100)
        return CausalLMOutput(logits, loss, cache, pos)

    # -- generation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, attention_mask=None, do_sample=False,
                 temperature=1.0, top_p=None, top_k=None, num_beams=1, max_new_tokens=128, use_cache=True,
                 eos_token_id=None, pad_token_id=None, generator: torch.Generator | None = None,
                 streamer=None, stopping_criteria=None, input_ids=None, inputs_embeds=None, texts=None,
                 **unsupported) -> torch.Tensor:
        """Greedy (or sampled) decoding; returns only the new tokens [B, n], padded after EOS.

        Batches are spliced with left padding so every row's last prompt token is the last position.
        The arguments are those LLaVA's scripts pass to transformers' ``generate``; any other is an error
        rather than silently ignored. ``stopping_criteria`` (a list of callables, e.g. LLaVA's
        ``KeywordsStoppingCriteria``) is called after every step with the new tokens so far ``[B, n]`` and
        the step's logits, as transformers does for a prompt given as embeddings; a criterion returns one
        bool (stop every row) or a bool tensor ``[B]`` (stop those rows). ``texts`` (CDPruner's argument):
        each prompt's instruction, read by vision-stage methods that need it.

        Synchronisation: checking whether every row has finished reads one bool on the host per generated
        token (that is what lets generation stop early); ``streamer`` and ``stopping_criteria`` read the
        tokens on the host too.
        """
        if unsupported:
            names = ", ".join(sorted(unsupported))
            raise TypeError(f"generate() does not support {names}; it takes LLaVA's generation arguments "
                            "(images, image_sizes, attention_mask, do_sample, temperature, top_p, top_k, num_beams=1, "
                            "max_new_tokens, use_cache, eos_token_id, pad_token_id, streamer, stopping_criteria, "
                            "texts)")
        if inputs_embeds is not None:
            raise NotImplementedError("generate() takes input_ids with <image> markers, not inputs_embeds")
        if inputs is not None and input_ids is not None:
            raise TypeError("generate() got the prompt twice: pass inputs or input_ids, not both")
        inputs = inputs if inputs is not None else input_ids
        if num_beams != 1:
            raise NotImplementedError("beam search is not supported; LLaVA's benchmarks decode greedily (num_beams=1)")
        if inputs is None:
            raise ValueError("generate() needs input ids")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = pad_token_id if pad_token_id is not None else self.config.pad_token_id
        if pad is None:  # token id 0 is a real id: only a missing pad id falls back to EOS
            pad = eos
        sample = do_sample and temperature is not None and temperature > 0

        embeds, mask, pos, _, splice = self._prefill_inputs(inputs, images, attention_mask, None, None, None,
                                                            padding_side="left", texts=texts,
                                                            image_sizes=image_sizes)
        self._check_window(max(splice.lengths) + max_new_tokens - 1, "the prompt plus max_new_tokens - 1")
        b = embeds.shape[0]
        device = embeds.device
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        out = torch.full((b, max_new_tokens), pad, dtype=torch.long, device=device)

        if use_cache:
            cache = KVCache(len(self.model.layers), extra=max_new_tokens)
            hidden, _ = self.model(embeds, pos, mask, cache, self._prune_hook(splice), has_padding=_padded(splice))
        else:
            hook = self._prune_hook(splice)
            hidden, _ = self.model(embeds, pos, mask, None, hook, has_padding=_padded(splice))
        trace = self.model.prune_trace
        n = 0
        for n in range(max_new_tokens):
            logits = self.lm_head(hidden[:, -1]).float()
            token = _next_token(logits, sample, temperature, top_p, top_k, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            out[:, n] = token
            if streamer is not None:
                streamer.put(token.cpu())
            finished |= token == eos
            for criterion in stopping_criteria or ():
                finished |= _stop_rows(criterion(out[:, : n + 1], logits), b, device)
            if n + 1 == max_new_tokens or bool(finished.all()):
                break
            if use_cache:
                step_pos = cache.next_position[:, None]
                hidden, _ = self.model(self.model.embed_tokens(token[:, None]), step_pos, None, cache)
            else:
                # Recompute from scratch on prompt + generated tokens: the reference path for the cache.
                new_embeds = self.model.embed_tokens(out[:, : n + 1])
                full = torch.cat([embeds, new_embeds], dim=1)
                new_pos = pos[:, -1:] + 1 + torch.arange(n + 1, device=device)[None]
                full_pos = torch.cat([pos, new_pos], dim=1)
                full_mask = None if mask is None else torch.cat(
                    [mask, torch.ones(b, n + 1, dtype=torch.bool, device=device)], dim=1)
                grown = None if splice is None else dataclasses.replace(
                    splice, inputs_embeds=full, lengths=[n_real + n + 1 for n_real in splice.lengths],
                    prompt_lengths=splice.lengths)
                hidden, _ = self.model(full, full_pos, full_mask, None, self._prune_hook(grown),
                                       has_padding=_padded(grown))
        self.model.prune_trace = trace  # the prefill's record, not the last recomputation's
        if streamer is not None:
            streamer.end()
        return out[:, : n + 1]


def _padded(splice: Splice | None) -> bool | None:
    # The splice knows on the host whether any row is padded; without one the model reads the mask.
    return None if splice is None else splice.has_padding


def _stop_rows(verdict, b: int, device) -> torch.Tensor:
    """A stopping criterion's answer as a bool tensor [B]: one bool stops every row."""
    if isinstance(verdict, torch.Tensor):
        verdict = verdict.to(device=device, dtype=torch.bool)
        return verdict.expand(b) if verdict.numel() == 1 else verdict.reshape(b)
    return torch.full((b,), bool(verdict), dtype=torch.bool, device=device)


def _positions_from_mask(mask, b, t, device):
    if mask is None:
        return torch.arange(t, device=device)[None].expand(b, t)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _next_token(logits, sample, temperature, top_p, top_k, generator):
    if not sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
