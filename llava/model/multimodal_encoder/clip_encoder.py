"""The CLIP vision tower: transformers' CLIPVisionModel, features from `mm_vision_select_layer`."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn


def clip_image_processor_class():
    """CLIP's PIL image processor: transformers 5 names it CLIPImageProcessorPil (its default class wants
    torchvision, which has no CPU build); older releases call it CLIPImageProcessor."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


@contextlib.contextmanager
def _quiet_loading():
    """transformers prints a load report listing the other half of a full CLIP checkpoint as unexpected;
    the loaders here check the loading info themselves, so its report and progress bar are silenced."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class CLIPVisionTower(nn.Module):
    """Wraps `CLIPVisionModel` so that its weights are named `vision_tower.vision_model.*`, as in LLaVA."""

    def __init__(self, vision_tower: str, select_layer: int = -2, select_feature: str = "patch",
                 vision_config: dict | None = None):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unknown mm_vision_select_feature {select_feature!r}; expected 'patch' or 'cls_patch'")
        self.vision_tower_name = vision_tower
        self.select_layer = select_layer
        self.select_feature = select_feature
        if vision_config is not None:
            cfg = CLIPVisionConfig(**vision_config)
        else:
            local = os.path.isdir(vision_tower)
            if local:
                from llava.model.checkpoint import read_json

                if not os.path.isfile(os.path.join(vision_tower, "config.json")):
                    raise FileNotFoundError(f"vision tower {vision_tower!r} has no config.json")
                read_json(os.path.join(vision_tower, "config.json"))
            cfg = CLIPVisionConfig.from_pretrained(vision_tower, local_files_only=local)
        # hidden_states holds the embeddings and each layer's output: num_hidden_layers + 1 entries.
        states = cfg.num_hidden_layers + 1
        if not isinstance(select_layer, int) or not -states <= select_layer < states:
            raise ValueError(f"mm_vision_select_layer {select_layer!r} is out of range for a vision tower of "
                             f"{cfg.num_hidden_layers} layers (it indexes {states} hidden states: "
                             f"{-states}..{states - 1}; LLaVA-1.5 uses -2)")
        self.vision_tower = CLIPVisionModel(cfg)
        self.vision_tower.requires_grad_(False)
        self.image_processor = None
        self.is_loaded = False

    def load_model(self, dtype: torch.dtype | None = None) -> None:
        """Load the tower's pretrained weights and image processor from its folder or hub id.

        Every weight of the tower must be in its checkpoint (transformers would initialise a missing one at
        random and carry on). Unused tensors are an error too, except those of the CLIP model around the
        vision half (openai's checkpoints hold the text tower as well) and position-id buffers.
        """
        from transformers import CLIPVisionModel

        from llava.model.checkpoint import read_json, weight_files

        name = self.vision_tower_name
        local = os.path.isdir(name)
        if local:
            if not os.path.isfile(os.path.join(name, "preprocessor_config.json")):
                raise FileNotFoundError(f"vision tower {name!r} has no preprocessor_config.json")
            read_json(os.path.join(name, "preprocessor_config.json"))
            weight_files(name)  # an error naming the folder when it holds no weights
        try:
            with _quiet_loading():
                model, info = CLIPVisionModel.from_pretrained(name, local_files_only=local, output_loading_info=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # a corrupt weights file: transformers' message may not say which tower
            raise ValueError(f"cannot load the vision tower {name!r}: {type(err).__name__}: {err}") from err
        missing = sorted(info.get("missing_keys") or ())
        mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
        unused = sorted(k for k in info.get("unexpected_keys") or () if not _clip_extra(k))
        if missing or mismatched or unused:
            parts = [f"{len(v)} {what}: {', '.join(v[:5])}" + (" ..." if len(v) > 5 else "")
                     for what, v in (("weight(s) missing from its weights", missing),
                                     ("weight(s) with another shape", mismatched),
                                     ("tensor(s) matching no weight", unused)) if v]
            raise ValueError(f"vision tower {name!r} does not fit its config.json: " + "; ".join(parts))
        self.vision_tower = model.to(dtype) if dtype is not None else model
        self.vision_tower.requires_grad_(False)
        processor_cls = clip_image_processor_class()
        self.image_processor = processor_cls.from_pretrained(name, local_files_only=local)
        self.is_loaded = True

    def feature_select(self, hidden_states) -> torch.Tensor:
        feats = hidden_states[self.select_layer]
        return feats[:, 1:] if self.select_feature == "patch" else feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # No autograd graph through a frozen tower; a tower unfrozen for training (unfreeze_mm_vision_tower) gets one.
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(trainable):
            out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
            return self.feature_select(out.hidden_states).to(images.dtype)

    @torch.no_grad()
    def hidden_states(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every encoder layer's input and the last output, ``[N, 1+V, Dv]`` each (CLS first), in the
        images' dtype: what vision-stage pruning methods read (``forward`` takes its features from them)."""
        out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return tuple(h.to(images.dtype) for h in out.hidden_states)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2


class CLIPTextEncoder:
    """CLIP's text tower and tokenizer as CDPruner uses them: ``texts -> [[S_i, P], ...]``, one
    ``text_embeds`` row per 77-token segment of each text.

    Each text is tokenized whole (no truncation), padded with zeros (ids and mask) to a multiple of the
    tower's context and cut into segments, so a long instruction gives several rows; every segment of every
    text goes through the tower in one call. In float32, as CDPruner loads it."""

    def __init__(self, tokenizer, model):
        self.tokenizer = tokenizer
        self.model = model
        self.context = model.config.max_position_embeddings

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[torch.Tensor]:
        import warnings

        ids, masks, counts = [], [], []
        for text in texts:
            with warnings.catch_warnings():  # "sequence longer than the model's maximum": it is cut below
                warnings.simplefilter("ignore")
                enc = self.tokenizer(text=text, return_tensors="pt", verbose=False)
            segments = (enc.input_ids.shape[1] - 1) // self.context + 1
            pad = segments * self.context - enc.input_ids.shape[1]
            ids.append(nn.functional.pad(enc.input_ids, (0, pad)).reshape(segments, self.context))
            masks.append(nn.functional.pad(enc.attention_mask, (0, pad)).reshape(segments, self.context))
            counts.append(segments)
        device = next(self.model.parameters()).device
        embeds = self.model(input_ids=torch.cat(ids).to(device), attention_mask=torch.cat(masks).to(device)).text_embeds
        return list(embeds.split(counts))


class CLIPImageProjection(nn.Module):
    """CLIP's ``visual_projection``, in float32 as CDPruner applies it (to the float of its input)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float())


def load_clip_text(name: str, tower=None, device=None) -> tuple[CLIPTextEncoder, CLIPImageProjection]:
    """CLIP's text tower, tokenizer and visual projection from the full CLIP checkpoint ``name`` (a folder
    or a hub id, e.g. openai/clip-vit-large-patch14-336, the checkpoint LLaVA-1.5's tower comes from).

    Loaded only for the methods that read CLIP's image-text similarity (CDPruner). ``tower``: the model's
    CLIPVisionTower; the checkpoint's vision half must be that tower (the projection is applied to its
    features), which is checked on its patch embedding.
    """
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    local = os.path.isdir(name)
    hint = ("CLIP's text tower comes from the full CLIP checkpoint of the model's vision tower (for LLaVA-1.5, "
            "openai/clip-vit-large-patch14-336, a hub id or a downloaded folder); name it with "
            "--prune-option clip_text_tower=PATH_OR_ID")
    if not local and (os.path.sep in name or name.startswith(".")):
        raise FileNotFoundError(f"CLIP checkpoint {name!r} not found. {hint}")
    try:
        with _quiet_loading():
            text, info = CLIPTextModelWithProjection.from_pretrained(name, local_files_only=local,
                                                                     output_loading_info=True, dtype=torch.float32)
            vision, vinfo = CLIPVisionModelWithProjection.from_pretrained(name, local_files_only=local,
                                                                          output_loading_info=True, dtype=torch.float32)
            tokenizer = CLIPTokenizer.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load CLIP's text tower from {name!r}: {type(err).__name__}: {err}\n{hint}") from err
    missing = sorted({*(info.get("missing_keys") or ()), *(k for k in vinfo.get("missing_keys") or ()
                                                            if "projection" in k)})
    if missing:
        raise ValueError(f"{name!r} is not a full CLIP checkpoint: {len(missing)} weight(s) of the text tower or "
                         f"the projections missing ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}). "
                         + hint)
    if tower is not None:
        def patch_weight(model):
            return getattr(model, "vision_model", model).embeddings.patch_embedding.weight

        ours, theirs = patch_weight(tower.vision_tower), patch_weight(vision)
        if ours.shape != theirs.shape or not torch.allclose(ours.float().cpu(), theirs.cpu(), atol=1e-3, rtol=1e-3):
            raise ValueError(f"the CLIP checkpoint {name!r} is not the model's vision tower "
                             f"({tower.vision_tower_name!r}): its vision weights differ. " + hint)
    text.requires_grad_(False).eval()
    projection = CLIPImageProjection(vision.visual_projection).requires_grad_(False)
    if device is not None:
        text.to(device)
        projection.to(device)
    return CLIPTextEncoder(tokenizer, text), projection


def _clip_extra(key: str) -> bool:
    """Tensors of a full CLIPModel checkpoint that CLIPVisionModel does not use, and position-id buffers."""
    return (key.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale"))
            or key.endswith("position_ids"))

