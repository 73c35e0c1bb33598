"""Training samples from synthetic referring videos, built exactly as the pointer prompts.

One sample is one keyframe t of a synthetic scene with

* its crops (the keyframe's own multi-crop layout) and the crops of its l previous frames, in
  the order ``VideoMolmoPointer.temporal_context`` averages them: black padding frames first
  (where t < l, as the release pads the start of a video), then t-1, t-2, ... (most recent
  first); every history frame is cut with the keyframe's layout;
* ``queries_per_frame`` referring expressions of the scene, and per query the answer: Molmo
  point text of the ground-truth points (``Scene.points_for`` at t, one per visible referent,
  in percent with one decimal, sorted left to right then top to bottom), "There are none."
  when no referent is visible;
* one packed token sequence ``[bos] + image tokens + (prompt_1 answer_1 <eos>) + (prompt_2
  answer_2 <eos>) + ...``. The prompt of a query is the pointer's: ``user_message(
  pointing_instruction(query))`` after the image prefix ``MultiCropPreprocessor.prompt``.
  Segments never see each other (``attention_mask`` below) and each restarts its positions
  right after the image prefix, so each query is computed exactly as at inference, while the
  image (ViT, temporal module, projector, prefix) is computed once for all queries.

With ``captions`` (training only, as Molmo's dense-caption pre-training): one more segment per
keyframe asks "Describe this image." and answers with every object of at least
``CAPTION_MIN_PIXELS`` visible pixels, left to right ("A small striped red circle moving left
and a large plain blue star."). Every word of it depends on the image, so the LLM learns to
read image tokens from dense supervision instead of from the few digits of point text; a model
trained from scratch without it did not use the image at all after 2,500 steps.

``labels`` hold the answer tokens (and each answer's ``<eos>``) and -100 elsewhere: only the
point text carries loss. Samples are a pure function of (``DataConfig``, index): resuming needs
only the index of the next sample.

Scene seeds: training scenes use ``TRAIN_SEED_OFFSET + data_seed * SEEDS_PER_DATA_SEED +
scene_index`` (>= 1,000,000); held-out evaluation uses seeds below ``TRAIN_SEED_OFFSET``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from videomolmo_ros.core.points import Point, format_points
from videomolmo_ros.core.schedule import history_indices
from videomolmo_ros.data.synthetic import KINDS, Scene, SceneConfig, make_scene
from videomolmo_ros.model.config import VideoMolmoConfig
from videomolmo_ros.model.pointer import pointing_instruction, user_message
from videomolmo_ros.model.preprocessing import ImageTokenIds, MultiCropPreprocessor, black_frame

TRAIN_SEED_OFFSET = 1_000_000
SEEDS_PER_DATA_SEED = 100_000_000
IGNORE_INDEX = -100
CAPTION_PROMPT = "Describe this image."
CAPTION_MIN_PIXELS = 20  # as the oracle pointer: smaller slivers are not described


@dataclass(frozen=True)
class DataConfig:
    """What the sample stream draws.

    seed: data seed (scenes, keyframes and queries follow from it and the sample index).
    scene: ``SceneConfig`` overrides (width, height, num_frames, ...); seed is set per scene.
    pool_size: number of distinct scenes (cycled); None = new scenes, never repeated.
    frames_per_scene: samples (keyframes) drawn from each scene.
    interleave: consecutive samples cycle through this many scenes (each gets
        ``frames_per_scene`` of them), so a batch mixes scenes while each scene is generated
        once.
    queries_per_frame: queries packed with one keyframe (fewer if the scene has fewer).
    history_frames: l, previous frames fed to the temporal module (0 = single frame).
    history_stride: s, their spacing: frames t-s, t-2s, ..., t-l*s (1 = the release's).
    kinds: expression kinds to draw from; a kind is chosen (see ``kind_weights``), then an
        expression of it uniformly.
    kind_weights: relative odds of a kind among those a scene has (unlisted kinds weigh 1;
        empty = uniform, the draw of runs recorded before this field). A curriculum lever:
        more of the kind a model is weakest at without dropping the others.
    captions: caption segments per keyframe (0 or 1; see the module docstring).
    """

    seed: int = 0
    scene: dict[str, Any] = field(default_factory=dict)
    pool_size: int | None = None
    frames_per_scene: int = 4
    interleave: int = 4
    queries_per_frame: int = 8
    history_frames: int = 4
    history_stride: int = 1
    kinds: tuple[str, ...] = KINDS
    kind_weights: dict[str, float] = field(default_factory=dict)
    captions: int = 0

    def __post_init__(self) -> None:
        if self.captions not in (0, 1):
            raise ValueError(f"captions must be 0 or 1, got {self.captions}")
        if min(self.frames_per_scene, self.interleave, self.queries_per_frame) < 1:
            raise ValueError("frames_per_scene, interleave and queries_per_frame must be >= 1")
        if self.history_frames < 0:
            raise ValueError("history_frames must be >= 0")
        if self.history_stride < 1:
            raise ValueError("history_stride must be >= 1")
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        stray = set(self.kind_weights) - set(self.kinds)
        if stray:
            raise ValueError(f"kind_weights name kinds not trained on: {sorted(stray)} "
                             f"(kinds: {self.kinds})")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                   for w in self.kind_weights.values()):  # NaN fails w > 0
            raise ValueError(f"kind_weights must be numbers > 0 (leave a kind out of kinds to "
                             f"drop it), got {self.kind_weights}")

    def scene_index(self, index: int) -> int:
        """Which scene sample ``index`` comes from (see ``interleave``)."""
        block, offset = divmod(int(index), self.interleave * self.frames_per_scene)
        scene = block * self.interleave + offset % self.interleave
        return scene % self.pool_size if self.pool_size is not None else scene

    def scene_seed(self, scene_index: int) -> int:
        return TRAIN_SEED_OFFSET + self.seed * SEEDS_PER_DATA_SEED + scene_index


@dataclass
class Sample:
    """One keyframe with its queries (shapes: T crops, P patches, D = patch*patch*3 pixels,
    K pooled patches per crop, l history frames, L tokens).

    crops: (T, P, D) float32. history: (l, T, P, D) float32, in averaging order.
    input_ids / labels / position_ids / segments: (L,) int64; segments: 0 = image prefix,
    i = query i (1-based). image_input_idx: (T, K) int64, -1 = not inserted.
    """

    crops: torch.Tensor
    history: torch.Tensor
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    image_input_idx: torch.Tensor
    queries: list[str]
    answers: list[str]
    scene_seed: int
    frame_index: int
    # Token ids of each query's own text (segment i at index i - 1; empty for a caption):
    # the targets of the trainer's optional query-recall loss.
    query_tokens: list[list[int]] = field(default_factory=list)
    # Stage 0's per-image-token targets of the keyframe (``vision_pretrain.DenseTargets``),
    # when the dataset was asked for them (the trainer's ``keep_readouts``).
    token_targets: Any = None
    # (S, T, K) float32: the fraction of each image token of the keyframe that query i's
    # referents cover (zero for a caption or an answer of none), when the dataset was asked
    # for them: the targets of the trainer's optional referent-map loss.
    referent_maps: torch.Tensor | None = None

    @property
    def num_answer_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def answer_text(points: Sequence[Point], width: int, height: int, label: str) -> str:
    """The target: Molmo point text (leading space, as Molmo answers after "Assistant:"),
    points sorted by (x, y) so that the order is a function of the image."""
    ordered = sorted(points, key=lambda p: (p.x, p.y))
    return " " + format_points(ordered, width, height, label)


def caption_text(scene: Scene, t: int) -> str:
    """The dense caption of frame t (leading space, as an answer): the visible objects left to
    right (by their ground-truth point), each as "size texture colour shape [moving dir]"."""
    described = []
    for obj in scene.objects:
        if scene.masks[t, obj.object_id].sum() < CAPTION_MIN_PIXELS:
            continue
        point = scene.points_for([obj.object_id], t)[0]
        words = f"a {obj.size} {obj.texture} {obj.color} {obj.shape}"
        if obj.motion != "static":
            words += f" moving {obj.motion}"
        described.append((point.x, point.y, words))
    phrases = [words for _, _, words in sorted(described)]
    if not phrases:
        return " Nothing."
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return " " + text[0].upper() + text[1:] + "."


def bos_token_id(tokenizer: Any) -> int:
    """The first token of every sequence: BOS, or end-of-text for Qwen2-style vocabularies
    (what ``VideoMolmoPointer`` uses)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None else int(tokenizer.eos_token_id)


class PointingDataset(torch.utils.data.Dataset):
    """Index -> ``Sample``; endless when ``pool_size`` is None (``len`` is then a large number
    so that samplers work; the trainer indexes it directly)."""

    def __init__(self, data: DataConfig, model_config: VideoMolmoConfig, tokenizer: Any,
                 dense_targets: bool = False, referent_maps: bool = False) -> None:
        self.data = data
        self.dense_targets = dense_targets
        self.referent_maps = referent_maps
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.preprocessor = MultiCropPreprocessor(model_config,
                                                  ImageTokenIds.from_tokenizer(tokenizer))
        self.bos_id = bos_token_id(tokenizer)
        self.eos_id = int(tokenizer.eos_token_id)
        self._scene = functools.lru_cache(maxsize=data.interleave + 1)(self._make_scene)

    def __len__(self) -> int:
        return 2 ** 62

    def _make_scene(self, scene_seed: int) -> Scene:
        return make_scene(SceneConfig(**{**self.data.scene, "seed": scene_seed}))

    def scene_for(self, index: int) -> Scene:
        return self._scene(self.data.scene_seed(self.data.scene_index(index)))

    def choose_queries(self, scene: Scene, rng: np.random.Generator) -> list[Any]:
        """Up to ``queries_per_frame`` distinct expressions: a kind among the kinds present
        (uniformly, or by ``kind_weights``), then an expression of it uniformly."""
        pools = {k: scene.expressions_of_kind(k) for k in self.data.kinds}
        pools = {k: list(v) for k, v in pools.items() if v}
        chosen = []
        while pools and len(chosen) < self.data.queries_per_frame:
            kinds = sorted(pools)
            if self.data.kind_weights:
                odds = np.array([self.data.kind_weights.get(k, 1.0) for k in kinds])
                kind = kinds[int(rng.choice(len(kinds), p=odds / odds.sum()))]
            else:  # kept as it was: older runs' data streams stay bit-exact
                kind = kinds[int(rng.integers(len(kinds)))]
            chosen.append(pools[kind].pop(int(rng.integers(len(pools[kind])))))
            if not pools[kind]:
                del pools[kind]
        return chosen

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene_for(index)
        rng = np.random.default_rng([self.data.seed, int(index)])
        t = int(rng.integers(scene.num_frames))
        expressions = self.choose_queries(scene, rng)

        keyframe = self.preprocessor.frame(scene.frames[t])
        layout = keyframe.layout
        l, s = self.data.history_frames, self.data.history_stride
        previous = [scene.frames[i] for i in history_indices(t, l, s)]
        history_images = [black_frame(layout)] * (l - len(previous)) + previous
        history = (torch.stack([self.preprocessor.frame(img, layout).crops
                                for img in history_images])
                   if history_images else keyframe.crops.new_zeros((0,) + keyframe.crops.shape))

        prefix, image_index = self.preprocessor.prompt(layout, [], self.bos_id)
        ids, labels, positions, segments = [prefix], [torch.full_like(prefix, IGNORE_INDEX)], \
            [torch.arange(len(prefix))], [torch.zeros_like(prefix)]
        queries, answers, query_tokens = [], [], []
        segments_qa = [(e.text, answer_text(scene.points_for(e.object_ids, t), scene.width,
                                            scene.height, e.text), pointing_instruction(e.text))
                       for e in expressions]
        segments_qa += [(CAPTION_PROMPT, caption_text(scene, t), CAPTION_PROMPT)] * \
            self.data.captions
        for j, (query, answer, instruction) in enumerate(segments_qa, start=1):
            prompt_ids = self.tokenizer.encode(user_message(instruction),
                                               add_special_tokens=False)
            answer_ids = self.tokenizer.encode(answer, add_special_tokens=False) + [self.eos_id]
            segment = torch.tensor(prompt_ids + answer_ids, dtype=torch.long)
            ids.append(segment)
            labels.append(torch.tensor([IGNORE_INDEX] * len(prompt_ids) + answer_ids))
            positions.append(torch.arange(len(prefix), len(prefix) + len(segment)))
            segments.append(torch.full_like(segment, j))
            queries.append(query)
            answers.append(answer)
            query_tokens.append([] if query == CAPTION_PROMPT else
                                self.tokenizer.encode(" " + query, add_special_tokens=False))
        token_targets = None
        if self.dense_targets:
            from videomolmo_ros.train.vision_pretrain import dense_targets

            token_targets = dense_targets(scene, t, layout, self.model_config).tokens
        referent_maps = None
        if self.referent_maps:
            from videomolmo_ros.train.vision_pretrain import pool_to_tokens, view_coverage

            coverage = pool_to_tokens(view_coverage(scene.masks[t], layout, self.model_config),
                                      self.model_config)  # (T, K, N objects)
            maps = [coverage[..., list(e.object_ids)].sum(-1).clip(0.0, 1.0)
                    for e in expressions] + [np.zeros(coverage.shape[:2])] * self.data.captions
            # A frame may have no query at all (two identical objects leave no attribute
            # expression): then no rows.
            referent_maps = torch.from_numpy(np.stack(maps).astype(np.float32) if maps else
                                             np.zeros((0,) + coverage.shape[:2], np.float32))
        return Sample(keyframe.crops, history, torch.cat(ids), torch.cat(labels),
                      torch.cat(positions), torch.cat(segments), image_index, queries, answers,
                      scene.config.seed, t, query_tokens, token_targets, referent_maps)


@dataclass
class Batch:
    """Samples padded to one length L (B samples).

    crops: (B, T, P, D). history: (B, l, T, P, D). input_ids, labels, position_ids: (B, L).
    attention_mask: (B, 1, L, L) bool, True = may attend (causal, within the image prefix and
    the token's own query segment; a padding token sees only itself). image_input_idx:
    (B, T, K). num_answer_tokens: tokens carrying loss. segments: (B, L), 0 = image prefix,
    i = query i, -1 = padding. query_tokens: (B, S + 1, Q) the token ids of each segment's
    query text (row 0 and padding -1). token_targets: the keyframes' stage-0 image-token targets
    (``vision_pretrain.DenseTargets`` with a leading B axis) or None. referent_maps:
    (B, S + 1, T, K) each segment's ``Sample.referent_maps`` row (row 0 and padding zero) or
    None.
    """

    crops: torch.Tensor
    history: torch.Tensor
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_input_idx: torch.Tensor
    num_answer_tokens: int
    num_queries: int
    segments: torch.Tensor | None = None
    query_tokens: torch.Tensor | None = None
    token_targets: Any = None  # stacked Sample.token_targets, when every sample has them
    referent_maps: torch.Tensor | None = None


def segment_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """segments (B, L), -1 = padding -> (B, 1, L, L) bool: query position q may attend to key
    position k when k <= q and k is in the image prefix (0) or in q's own segment."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    allowed = causal & (k_seg >= 0) & (q_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    allowed |= torch.eye(length, dtype=torch.bool)  # padding rows: never an empty softmax
    return allowed[:, None]


def collate(samples: Sequence[Sample], pad_id: int) -> Batch:
    """Pad and stack samples (they must share the crop layout, i.e. the frame size)."""
    length = max(len(s.input_ids) for s in samples)

    def pad(values: list[torch.Tensor], fill: int) -> torch.Tensor:
        return torch.stack([torch.cat([v, v.new_full((length - len(v),), fill)]) for v in values])

    segments = pad([s.segments for s in samples], -1)
    rows = max(len(s.query_tokens) for s in samples) + 1
    width = max([len(q) for s in samples for q in s.query_tokens] + [1])
    query_tokens = torch.full((len(samples), rows, width), -1, dtype=torch.long)
    for b, sample in enumerate(samples):
        for j, tokens in enumerate(sample.query_tokens, start=1):
            query_tokens[b, j, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    token_targets = None
    if all(s.token_targets is not None for s in samples):
        from videomolmo_ros.train.vision_pretrain import stack_dense_targets

        token_targets = stack_dense_targets([s.token_targets for s in samples])
    referent_maps = None
    if all(s.referent_maps is not None for s in samples):
        views = samples[0].referent_maps.shape[1:]
        referent_maps = torch.zeros((len(samples), rows) + tuple(views))
        for b, sample in enumerate(samples):
            referent_maps[b, 1:1 + len(sample.referent_maps)] = sample.referent_maps
    return Batch(
        crops=torch.stack([s.crops for s in samples]),
        history=torch.stack([s.history for s in samples]),
        input_ids=pad([s.input_ids for s in samples], pad_id),
        labels=pad([s.labels for s in samples], IGNORE_INDEX),
        position_ids=pad([s.position_ids for s in samples], 0),
        attention_mask=segment_attention_mask(segments),
        image_input_idx=torch.stack([s.image_input_idx for s in samples]),
        num_answer_tokens=sum(s.num_answer_tokens for s in samples),
        num_queries=sum(len(s.queries) for s in samples),
        segments=segments,
        query_tokens=query_tokens,
        token_targets=token_targets,
        referent_maps=referent_maps,
    )
