"""The multimodal parts of LLaVA: vision tower + projector, and splicing image features into the text.

`splice_multimodal` is the one place where images meet text. It returns, besides the embeddings, where each
image's tokens landed (`Splice.image_spans`), so that nothing downstream needs hard-coded offsets, and for
LLaVA-1.6 (anyres) images where each token came from (`Splice.image_layouts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llava.anyres import ImageLayout, feature_layout
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_projector.builder import build_vision_projector


@dataclass
class Splice:
    """A padded batch of spliced sequences and where its images sit (python ints, known before any layer)."""

    inputs_embeds: torch.Tensor  # [B, T, D]
    attention_mask: torch.Tensor  # [B, T] bool, True over real tokens
    position_ids: torch.Tensor  # [B, T] long, 0..n-1 over real tokens
    labels: torch.Tensor | None  # [B, T] or None
    image_spans: list[list[tuple[int, int]]]  # per row: (start, length) of each image in the padded sequence
    lengths: list[int]  # real tokens per row
    padding_side: str
    # Real tokens per row that belong to the prompt (None: all of them). Recomputing a generation from
    # scratch appends the answer so far; pruning methods still read the prompt's last token and instruction.
    prompt_lengths: list[int] | None = None
    # Vision-stage pruning: per row, per image, [PruneRecord] of the stage (layer 0); None when it did not run.
    vision_trace: list | None = None
    # Per row, per image (as image_spans): the ImageLayout of a LLaVA-1.6 multi-crop image (which positions of
    # the span are image_newline tokens, which crop and patch each token came from, the unpadded grid), or None
    # for an image of one view (LLaVA-1.5). Cut with its span when the context length cuts the row.
    image_layouts: list[list[ImageLayout | None]] | None = None

    @property
    def has_padding(self) -> bool:
        return any(n != self.inputs_embeds.shape[1] for n in self.lengths)


class LlavaMetaModel:
    """Mixed into the language model: adds `vision_tower` and `mm_projector` (weight names as LLaVA's)."""

    def init_vision_modules(self, config) -> None:
        if getattr(config, "mm_vision_tower", None):
            self.vision_tower = build_vision_tower(config)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in getattr(config, "mm_patch_merge_type", "flat"):
                # LLaVA-1.6's learned row separator (LLaVA: model.image_newline; transformers: image_newline).
                self.image_newline = nn.Parameter(torch.empty(config.hidden_size))

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)


class LlavaMetaForCausalLM:
    """Mixed into the causal LM: image encoding and the splice."""

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        model = self.get_model()
        feats = model.vision_tower(images)
        return model.mm_projector(feats.to(model.mm_projector_dtype))

    @property
    def multi_view(self) -> bool:
        """LLaVA-1.6's input convention: a list entry (or a 5-D tensor's entry) is one image's views."""
        cfg = self.config
        return getattr(cfg, "image_aspect_ratio", "pad") == "anyres" or getattr(cfg, "mm_patch_merge_type",
                                                                                 "flat") != "flat"

    def _image_views(self, images) -> list[torch.Tensor] | None:
        """Multi-view input as LLaVA reads it: per image its ``[n, 3, S, S]`` views, in marker order; None for
        a 4-D tensor, which LLaVA encodes as plain single-view images."""
        if isinstance(images, (list, tuple)):
            return [im[None] if im.ndim == 3 else im for im in images]
        if images.ndim == 5:
            return list(images)
        return None

    def _image_pixels(self, images) -> list[torch.Tensor]:
        """Every image as its own ``[1, 3, H, W]`` tensor, in marker order."""
        if self.multi_view and self._image_views(images) is not None:
            raise NotImplementedError("LLaVA-1.6 multi-crop images are pruned at the vision stage by "
                                      "_vision_stage_anyres, not one view at a time")
        if isinstance(images, (list, tuple)):
            out = []
            for im in images:
                out += list((im if im.ndim == 4 else im[None])[:, None])
            return out
        if images.ndim == 5:
            raise ValueError("multi-crop (5-D) image input is for LLaVA-1.6 (image_aspect_ratio anyres); "
                             "this model takes [N, 3, H, W]")
        if images.ndim != 4:
            raise ValueError(f"images must be [N, 3, H, W]; got shape {tuple(images.shape)}")
        return list(images[:, None])

    def _vision_stage(self, images, image_rows: list[int], texts) -> tuple[list[torch.Tensor], list]:
        """Vision-stage pruning: each image's kept (and merged) tokens, projected, and its PruneRecord.

        Images of one pixel shape go through the tower together and the method sees all of them in one call;
        every image gets the instruction of its prompt (``texts[row]``).
        """
        from entropyprune.hook import PruneRecord
        from entropyprune.methods import as_selection, get_spec
        from entropyprune.vision_inputs import VisionInputs

        model = self.get_model()
        cfg = model.prune
        spec = get_spec(cfg.method)
        options = cfg.method_options()
        tower = model.get_vision_tower()
        clip_text = getattr(model, "clip_text", None)
        pixels = self._image_pixels(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, px in enumerate(pixels):
            by_shape.setdefault(tuple(px.shape[1:]), []).append(i)
        feats: list = [None] * len(pixels)
        records: list = [None] * len(pixels)
        proj_dtype = model.mm_projector_dtype

        def project(x):
            return model.mm_projector(x.to(proj_dtype))

        # The efficiency benchmark wraps the call (``vision_method``) to time it on its own.
        method = getattr(model, "vision_method", None) or spec.fn
        memo: dict = {}
        for group, members in enumerate(by_shape.values()):
            batch = torch.cat([pixels[i] for i in members])
            states = tower.hidden_states(batch)
            instructions = None
            if texts is not None:
                instructions = [texts[image_rows[i]] for i in members]
            inputs = VisionInputs(config=cfg, options=options, hidden_states=states, select_layer=tower.select_layer,
                                  tower=tower.vision_tower, project=project, instructions=instructions,
                                  text_encoder=clip_text[0] if clip_text else None,
                                  image_projection=clip_text[1] if clip_text else None, memo=memo, group=group)
            v = inputs.num_tokens
            if cfg.adaptive:
                result = method(inputs, v)
                if not isinstance(result, (list, tuple)) or len(result) != len(members):
                    raise RuntimeError(f"adaptive method {cfg.method!r} must return one Selection per image")
                for i, sel in zip(members, result, strict=True):
                    emb = sel.embeds if sel.embeds is not None else inputs.kept_embeds(sel.kept[None])[0]
                    merged = sel.merged
                    feats[i] = emb if merged is None else torch.cat([emb, merged.to(emb.dtype)])
                    records[i] = PruneRecord(0, -1, v, sel.kept, sel.scores, 0 if merged is None else merged.shape[0])
                continue
            (stage,) = cfg.schedule(self.config.num_hidden_layers, v)
            sel = as_selection(method(inputs, stage.keep))
            emb = sel.embeds if sel.embeds is not None else inputs.kept_embeds(sel.kept)
            if stage.merged:
                if sel.merged is None or sel.merged.shape[1] != stage.merged:
                    raise RuntimeError(f"method {cfg.method!r} must return {stage.merged} merged tokens")
                emb = torch.cat([emb, sel.merged.to(emb.dtype)], dim=1)
            for j, i in enumerate(members):
                feats[i] = emb[j]
                records[i] = PruneRecord(0, -1, v, sel.kept[j], sel.scores[j], stage.merged)
        return feats, records

    def _vision_stage_anyres(self, views: list[torch.Tensor], image_rows: list[int], texts,
                             image_sizes) -> tuple[list[torch.Tensor], list]:
        """Vision-stage pruning of LLaVA-1.6 images as the method's official LLaVA-NeXT code does it
        (``MethodSpec.anyres``, one of entropyprune.methods.ANYRES_LAYOUTS).

        "merged": every image through the model's own merge (unpad, newlines), then the method on each image's
        V merged tokens (images of equal V in one call; a budget above an image's V keeps it whole, capped).
        Otherwise every view of every image goes through the tower in one call and the method sees all views at
        once (``VisionInputs.view_image`` says whose each is), with the budget per view; each image's kept
        tokens are then laid out as the official code lays them (flat, spatial without unpad or newline, or
        VisionZip's order); then the record's ``kept`` indexes the image's views flattened (view * per-view +
        patch), in splice order, and ``length`` is views x per-view. In "merged", as in-LLM records, ``kept``
        indexes the image's merged span (newlines included) and ``length`` is its V.
        """
        from entropyprune.hook import PruneRecord
        from entropyprune.methods import as_selection, get_spec
        from entropyprune.vision_inputs import VisionInputs

        model = self.get_model()
        cfg = model.prune
        spec = get_spec(cfg.method)
        options = cfg.method_options()
        kind = spec.anyres(options, getattr(self.config, "mm_patch_merge_type", "flat"))
        method = getattr(model, "vision_method", None) or spec.fn
        num_layers = self.config.num_hidden_layers
        proj_dtype = model.mm_projector_dtype
        memo: dict = {}
        if kind == "merged":
            merged_feats, _ = self._multi_view_features(views, image_sizes)
            by_len: dict[int, list[int]] = {}
            for i, f in enumerate(merged_feats):
                by_len.setdefault(f.shape[0], []).append(i)
            feats: list = [None] * len(views)
            records: list = [None] * len(views)
            for group, (v, members) in enumerate(by_len.items()):
                inputs = VisionInputs(config=cfg, options=options, projected=torch.stack([merged_feats[i] for i in
                                                                                          members]),
                                      grid=(1, v), memo=memo, group=group)
                stages, capped = cfg.image_schedule(num_layers, v)
                (stage,) = stages
                sel = as_selection(method(inputs, stage.keep))
                emb = sel.embeds if sel.embeds is not None else inputs.kept_embeds(sel.kept)
                if stage.merged:
                    emb = torch.cat([emb, sel.merged.to(emb.dtype)], dim=1)
                for j, i in enumerate(members):
                    feats[i] = emb[j]
                    records[i] = PruneRecord(0, -1, v, sel.kept[j], sel.scores[j], stage.merged, capped)
            return feats, records

        sizes = self._checked_sizes(views, image_sizes)
        tower = model.get_vision_tower()
        per_side = tower.num_patches_per_side
        per_view = per_side * per_side
        counts = [v.shape[0] for v in views]
        if min(counts) < 2:
            raise ValueError("a LLaVA-1.6 image must come as its base view and its crops (process_images with "
                             "image_aspect_ratio anyres); got an image of one view")
        states = tower.hidden_states(torch.cat(views))
        device = states[0].device
        owner = [i for i, n in enumerate(counts) for _ in range(n)]
        clip_text = getattr(model, "clip_text", None)
        inputs = VisionInputs(config=cfg, options=options, hidden_states=states, select_layer=tower.select_layer,
                              tower=tower.vision_tower, project=lambda x: model.mm_projector(x.to(proj_dtype)),
                              instructions=None if texts is None else [texts[image_rows[i]] for i in owner],
                              text_encoder=clip_text[0] if clip_text else None,
                              image_projection=clip_text[1] if clip_text else None, memo=memo,
                              view_image=torch.tensor(owner, device=device))
        if inputs.num_tokens != per_view:
            raise ValueError(f"--prune-method {cfg.method!r} on LLaVA-1.6 needs the tower's {per_side}x{per_side} "
                             f"patch grid per view; its features have {inputs.num_tokens} tokens")
        (stage,) = cfg.schedule(num_layers, per_view)
        sel = as_selection(method(inputs, stage.keep))
        emb = sel.embeds if sel.embeds is not None else inputs.kept_embeds(sel.kept)  # [views, keep, D]
        extra = sel.merged.to(emb.dtype) if stage.merged else None  # [views, merged, D]
        if stage.merged and not kind.startswith("visionzip"):
            raise RuntimeError(f"method {cfg.method!r} merges tokens, which its LLaVA-1.6 layout {kind!r} has no "
                               "place for")
        feats, records, first = [], [], 0
        for i, n in enumerate(counts):
            rows = slice(first, first + n)
            first += n
            # each kept patch as an index into the image's views flattened (view-major, ascending)
            flat = (torch.arange(n, device=device)[:, None] * per_view + sel.kept[rows]).reshape(-1)
            grid = "flat" if kind.endswith("flat") else "spatial"
            src, _ = feature_layout(sizes[i], n, per_side, grid, self.config.image_grid_pinpoints,
                                    tower.config.image_size)
            rank = torch.empty(n * per_view, dtype=torch.long)
            rank[src] = torch.arange(src.numel())
            order = rank.to(device)[flat].argsort()
            kept, tokens = flat[order], emb[rows].reshape(-1, emb.shape[-1])[order]
            if kind == "visionzip":
                # base: CLS, its dominant patches, its contextual tokens; then the crops' dominant patches on
                # the crop grid, every crop's CLS, every crop's contextual tokens (crop order)
                base = stage.keep
                tokens = torch.cat([extra[first - n, :1], tokens[:base], extra[first - n, 1:], tokens[base:],
                                    extra[first - n + 1:first, 0], extra[first - n + 1:first, 1:].reshape(
                                        -1, emb.shape[-1])])
            elif kind == "visionzip_flat":  # every view in turn: CLS, dominant patches, contextual tokens
                tokens = torch.cat([extra[rows, :1], emb[rows], extra[rows, 1:]], dim=1).reshape(-1, emb.shape[-1])
            feats.append(tokens)
            records.append(PruneRecord(0, -1, n * per_view, kept, sel.scores[rows].reshape(-1),
                                       n * stage.merged))
        return feats, records

    def _checked_sizes(self, views: list[torch.Tensor], image_sizes) -> list | None:
        sizes = None if image_sizes is None else [tuple(int(x) for x in sz) for sz in image_sizes]
        if sizes is not None and len(sizes) != len(views):
            raise ValueError(f"image_sizes gives {len(sizes)} size(s) for {len(views)} image(s); pass one "
                             "(width, height) per image, in marker order")
        if any(v.shape[1:] != views[0].shape[1:] for v in views):
            raise ValueError("every view of a LLaVA-1.6 image must have the tower's input size")
        return sizes if sizes is not None else [None] * len(views)

    def _multi_view_features(self, views: list[torch.Tensor], image_sizes) -> tuple[list, list]:
        """LLaVA-1.6: every view of every image through the tower in one call, then each image's features
        merged as LLaVA's prepare_inputs_labels_for_multimodal merges them (see llava.anyres.feature_layout)."""
        model = self.get_model()
        cfg = self.config
        sizes = None if image_sizes is None else [tuple(int(x) for x in sz) for sz in image_sizes]
        if sizes is not None and len(sizes) != len(views):
            raise ValueError(f"image_sizes gives {len(sizes)} size(s) for {len(views)} image(s); pass one "
                             "(width, height) per image, in marker order")
        if any(v.shape[1:] != views[0].shape[1:] for v in views):
            raise ValueError("every view of a LLaVA-1.6 image must have the tower's input size")
        encoded = self.encode_images(torch.cat(views, dim=0)).split([v.shape[0] for v in views])
        tower = model.get_vision_tower()
        per_side = tower.num_patches_per_side
        merge = getattr(cfg, "mm_patch_merge_type", "flat")
        newline = getattr(model, "image_newline", None)
        feats, layouts = [], []
        for i, f in enumerate(encoded):
            if f.shape[1] != per_side * per_side:
                raise ValueError(f"image {i} gives {f.shape[1]} features per view, but the tower's grid is "
                                 f"{per_side}x{per_side}: LLaVA-1.6's merge needs mm_vision_select_feature 'patch'")
            src, layout = feature_layout(None if sizes is None else sizes[i], f.shape[0], per_side, merge,
                                         cfg.image_grid_pinpoints, tower.config.image_size)
            flat = f.reshape(-1, f.shape[-1])
            if layout.newline.any():
                flat = torch.cat([flat, newline[None].to(device=flat.device, dtype=flat.dtype)])
            feats.append(flat[src.to(flat.device)])
            layouts.append(layout if f.shape[0] > 1 else None)
        return feats, layouts

    def _image_features(self, images, image_sizes=None) -> tuple[list[torch.Tensor], list]:
        """Each image's projected features [V, D], in marker order, and its ImageLayout (None: one view)."""
        if self.multi_view:
            views = self._image_views(images)
            if views is not None:
                return self._multi_view_features(views, image_sizes)
        feats = self._single_view_features(images)
        return feats, [None] * len(feats)

    def _single_view_features(self, images) -> list[torch.Tensor]:
        if isinstance(images, (list, tuple)):
            images = [im if im.ndim == 4 else im[None] for im in images]
            if any(im.shape[1:] != images[0].shape[1:] for im in images):
                return [f for im in images for f in self.encode_images(im)]
            images = torch.cat(images, dim=0)
        if images.ndim == 5:
            raise ValueError("multi-crop (5-D) image input is for LLaVA-1.6 (image_aspect_ratio anyres); "
                             "this model takes [N, 3, H, W]")
        if images.ndim != 4:
            raise ValueError(f"images must be [N, 3, H, W]; got shape {tuple(images.shape)}")
        return list(self.encode_images(images))

    def splice_multimodal(self, input_ids, images=None, attention_mask=None, labels=None,
                          padding_side: str | None = None, image_features: list | None = None,
                          texts=None, image_sizes=None) -> Splice:
        """Replace each IMAGE_TOKEN_INDEX in `input_ids` by that image's projected features and re-pad.

        `image_features` ([V, D] per image, already projected) replaces `images` and the vision tower; the
        efficiency benchmark uses it to time the language model on stand-in features.

        With a vision-stage pruning method set (``set_prune``), each image's features are its kept tokens:
        the splice holds N tokens for it with ordinary consecutive positions, and ``vision_trace`` records
        the stage. ``texts`` (one instruction per row, or one string for a batch of one) is what methods
        that read the instruction (CDPruner) see. ``image_sizes``: (width, height) of each image in marker
        order, as LLaVA passes them; LLaVA-1.6 needs them to lay out each image's crop grid.
        """
        model = self.get_model()
        embed = model.embed_tokens
        device = embed.weight.device
        padding_side = padding_side or self.config.tokenizer_padding_side
        ids = input_ids.to("cpu")
        mask = attention_mask.to("cpu").bool() if attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        n_markers = int((ids[mask] == IMAGE_TOKEN_INDEX).sum())
        feats: list[torch.Tensor] = []
        layouts: list = []
        vision_records = None
        if n_markers and image_features is not None:
            feats = list(image_features)
            layouts = [None] * len(feats)
            if len(feats) != n_markers:
                raise ValueError(f"the prompts hold {n_markers} <image> marker(s) but {len(feats)} feature set(s) "
                                 "were given")
        elif n_markers:
            if images is None:
                raise ValueError(f"the prompt has {n_markers} <image> marker(s) but no images were given")
            if model.get_vision_tower() is None:
                raise ValueError("the prompt has <image> markers but this model has no vision tower")
            prune = getattr(model, "prune", None)
            if prune is not None and prune.stage == "vision":
                image_rows = [b for b in range(ids.shape[0])
                              for _ in range(int((ids[b][mask[b]] == IMAGE_TOKEN_INDEX).sum()))]
                views = self._image_views(images) if self.multi_view else None
                n_images = len(views) if views is not None else len(self._image_pixels(images))
                if n_images != n_markers:
                    raise ValueError(f"the prompts hold {n_markers} <image> marker(s) but {n_images} image(s) "
                                     "were given")
                if views is not None:
                    feats, vision_records = self._vision_stage_anyres(views, image_rows,
                                                                      _row_texts(texts, ids.shape[0]), image_sizes)
                else:
                    feats, vision_records = self._vision_stage(images, image_rows, _row_texts(texts, ids.shape[0]))
                layouts = [None] * len(feats)
            else:
                feats, layouts = self._image_features(images, image_sizes)
            if len(feats) != n_markers:
                raise ValueError(f"the prompts hold {n_markers} <image> marker(s) but {len(feats)} image(s) were given")

        # One embedding call for the whole batch; image markers are looked up as token 0 and replaced below.
        text_embeds = embed(input_ids.clamp(min=0).to(device))
        rows, row_labels, spans, row_layouts = [], [], [], []
        next_feat = 0
        for b in range(ids.shape[0]):
            keep = mask[b].nonzero().squeeze(1)
            row_ids = ids[b, keep]
            row_emb = text_embeds[b, keep.to(device)]
            row_lab = labels[b, keep] if labels is not None else None
            marks = (row_ids == IMAGE_TOKEN_INDEX).nonzero().squeeze(1).tolist()
            pieces, lab_pieces, row_spans, lays = [], [], [], []
            prev, pos = 0, 0
            for m in marks:
                pieces.append(row_emb[prev:m])
                pos += m - prev
                feat = feats[next_feat].to(row_emb.dtype)
                lays.append(layouts[next_feat])
                next_feat += 1
                pieces.append(feat)
                row_spans.append((pos, feat.shape[0]))
                pos += feat.shape[0]
                if row_lab is not None:
                    lab_pieces += [row_lab[prev:m], torch.full((feat.shape[0],), IGNORE_INDEX, dtype=row_lab.dtype)]
                prev = m + 1
            pieces.append(row_emb[prev:])
            if row_lab is not None:
                lab_pieces.append(row_lab[prev:])
                row_labels.append(torch.cat(lab_pieces))
            rows.append(torch.cat(pieces))
            spans.append(row_spans)
            row_layouts.append(lays)

        max_len = self.config.tokenizer_model_max_length
        if max_len is not None:
            rows = [r[:max_len] for r in rows]
            row_labels = [r[:max_len] for r in row_labels]
            spans = [[(s, min(n, max_len - s)) for s, n in row if s < max_len] for row in spans]
            row_layouts = [[None if lay is None else lay.truncated(n) for lay, (_s, n) in zip(lays, row, strict=False)]
                           for lays, row in zip(row_layouts, spans, strict=True)]
        lengths = [r.shape[0] for r in rows]
        t = max(lengths)
        bsz, dim = len(rows), rows[0].shape[1]
        out = rows[0].new_zeros(bsz, t, dim)
        am = torch.zeros(bsz, t, dtype=torch.bool, device=device)
        pos_ids = torch.zeros(bsz, t, dtype=torch.long, device=device)
        lab = torch.full((bsz, t), IGNORE_INDEX, dtype=torch.long, device=device) if labels is not None else None
        for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            off = t - n if padding_side == "left" else 0
            out[b, off:off + n] = row
            am[b, off:off + n] = True
            pos_ids[b, off:off + n] = torch.arange(n, device=device)
            if lab is not None:
                lab[b, off:off + n] = row_labels[b].to(device)
            spans[b] = [(s + off, n_img) for s, n_img in spans[b]]
        trace = None
        if vision_records is not None:
            trace, first = [], 0  # a row's images are its first records (truncation drops only the last ones)
            for b, row in enumerate(spans):
                trace.append([])
                for j, (start, _n) in enumerate(row):
                    rec = vision_records[first + j]
                    rec.start = start
                    trace[-1].append([rec])
                first += int((ids[b][mask[b]] == IMAGE_TOKEN_INDEX).sum())
        return Splice(out, am, pos_ids, lab, spans, lengths, padding_side, vision_trace=trace,
                      image_layouts=row_layouts)

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, image_sizes=None, texts=None):
        """LLaVA's entry point, same arguments and return tuple; decode steps pass through unchanged.
        ``texts`` is CDPruner's addition: each prompt's instruction, for methods that read it."""
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        sp = self.splice_multimodal(input_ids, images, attention_mask, labels, texts=texts, image_sizes=image_sizes)
        return (
            None,
            sp.position_ids if position_ids is not None else None,
            sp.attention_mask.to(attention_mask.dtype) if attention_mask is not None else None,
            past_key_values,
            sp.inputs_embeds,
            sp.labels if labels is not None else None,
        )


def _row_texts(texts, rows: int) -> list | None:
    """``texts`` as one entry per row: a string is the instruction of a batch of one."""
    if texts is None:
        return None
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if len(texts) != rows or not all(t is None or isinstance(t, str) for t in texts):
        raise ValueError(f"texts must give one instruction string per prompt ({rows}); got {len(texts)} entries")
    return texts


def projector_dtype(projector: nn.Module) -> torch.dtype:
    for p in projector.parameters():
        return p.dtype
    return torch.float32
