"""The patch-token detector: tokens, grammar, object order, decoding, the model contract, overfitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import plaindet
from plaindet.config import from_dict, to_dict
from plaindet.models.patchtok import (
    PatchTokConfig,
    Vocabulary,
    boxes_from_corners,
    corner_tokens,
    grammar_mask,
    object_order,
)

VARIANTS = ["patchtok-ti", "patchtok-s"]
TINY = dict(backbone=dict(width=48, depth=2, heads=2), decoder=dict(width=64, depth=2, heads=4, dropout=0.0))
# Three objects of three classes on a noisy 96 px image; the corners are off the 16 px grid.
BOXES = torch.tensor([[10.5, 12.3, 40.2, 50.7], [50.0, 8.0, 90.0, 30.0], [30.4, 60.1, 85.9, 92.6]])
LABELS = torch.tensor([0, 1, 2])
COLORS = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]


def tiny_model(**overrides):
    torch.manual_seed(0)
    return plaindet.create_model("patchtok-ti", num_classes=3, **(TINY | {"image_size": 96, "max_objects": 6} | overrides))


def scene() -> tuple[torch.Tensor, list[dict]]:
    """The image ``(1, 3, 96, 96)`` uint8 and its target list."""
    pixels = np.random.default_rng(0).integers(60, 120, (96, 96, 3)).astype(np.uint8)
    for (x1, y1, x2, y2), label in zip(BOXES.tolist(), LABELS.tolist()):
        pixels[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = COLORS[label]
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    return image, [{"boxes": BOXES.clone(), "labels": LABELS.clone(), "size": (96, 96)}]


def random_targets(g: torch.Generator, counts: list[int], h: int, w: int, num_classes: int) -> list[dict]:
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 8.0, h - 8.0])
        wh = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2])
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (n,), generator=g), "size": (h, w)})
    return targets


def check_grammar(tokens: torch.Tensor, vocab: Vocabulary, grid: tuple[int, int], max_objects: int, class_first: bool) -> int:
    """Assert one decoded sequence ``(L,)`` is well formed; returns its number of objects.

    Written from the sequence definition, independently of :func:`grammar_mask`.
    """
    seq = tokens.tolist()
    assert seq[0] == vocab.bos
    end = seq.index(vocab.eos)
    body, rest = seq[1:end], seq[end + 1 :]
    assert all(t == vocab.pad for t in rest)
    assert len(body) % 3 == 0 and len(body) // 3 <= max_objects
    triples = zip(body[0::3], body[1::3], body[2::3]) if class_first else zip(body[2::3], body[0::3], body[1::3])
    for cls, tl, br in triples:
        assert 0 <= cls < vocab.num_classes
        (r1, c1), (r2, c2) = [divmod(t - vocab.num_classes, vocab.grid) for t in (tl, br)]
        assert 0 <= r1 <= r2 < grid[0] and 0 <= c1 <= c2 < grid[1]
    return len(body) // 3


# ------------------------------------------------------------------------------------------------
# Tokens


def test_corner_tokens_round_trip_exactly_with_true_offsets():
    vocab = Vocabulary(num_classes=5, grid=8)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 120
    boxes = torch.cat([xy, xy + 0.5 + torch.rand(200, 2, generator=g) * (128 - 0.5 - xy)], dim=1)
    # Corners exactly on patch borders, a one-pixel box and the whole image.
    boxes = torch.cat([boxes, torch.tensor([[16.0, 32.0, 48.0, 64.0], [17.0, 17.0, 18.0, 18.0], [0.0, 0.0, 128.0, 128.0]])])
    tl, br, offsets = corner_tokens(boxes, vocab, 16)
    assert ((offsets >= 0) & (offsets <= 1)).all()
    (r1, c1), (r2, c2) = vocab.row_col(tl), vocab.row_col(br)
    assert ((r1 <= r2) & (c1 <= c2)).all() and (r2 < 8).all() and (c2 < 8).all()
    # The patch holds the corner: tl patch contains (x1, y1), br patch contains the point just inside (x2, y2).
    assert ((c1 * 16 <= boxes[:, 0]) & (boxes[:, 0] < c1 * 16 + 16)).all()
    assert ((c2 * 16 < boxes[:, 2]) & (boxes[:, 2] <= c2 * 16 + 16)).all()
    assert tl[-3].item() == 5 + 2 * 8 + 1 and br[-3].item() == 5 + 3 * 8 + 2  # x2 = 48 ends in column 2
    assert torch.allclose(offsets[-3], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(boxes_from_corners(tl, br, offsets, vocab, 16), boxes, atol=1e-4)


def test_corner_tokens_round_trip_within_offset_precision():
    # Offsets stored with q levels per patch: boxes come back within half a level, p / (2q) pixels.
    vocab = Vocabulary(num_classes=3, grid=4)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(100, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 1 + torch.rand(100, 2, generator=g) * (64 - 1 - xy)], dim=1)
    tl, br, offsets = corner_tokens(boxes, vocab, 16)
    for levels in (1, 4, 32):
        rounded = (offsets * levels).round() / levels
        error = (boxes_from_corners(tl, br, rounded, vocab, 16) - boxes).abs().max()
        assert error <= 16 / (2 * levels) + 1e-4


def test_grammar_mask_by_hand_corners_first():
    vocab = Vocabulary(num_classes=2, grid=3)  # classes 0-1, positions 2-10, EOS 11, BOS 12, PAD 13
    tl = 2 + 1 * 3 + 1  # patch (1, 1)
    inputs = torch.tensor([[vocab.bos, 2, 3, 0, tl, 7, 1]])
    mask = grammar_mask(inputs, torch.arange(7), vocab, grid=(2, 3), max_objects=2)
    allowed = [set(torch.nonzero(row).flatten().tolist()) for row in mask[0]]
    in_grid = {2, 3, 4, 5, 6, 7}  # rows 0-1 of a 3-wide vocabulary grid
    assert allowed[0] == in_grid | {11}  # a top-left patch inside the 2x3 input grid, or EOS
    assert allowed[1] == in_grid  # bottom-right after top-left (0, 0): anywhere
    assert allowed[2] == {0, 1}  # the class
    assert allowed[3] == in_grid | {11}
    assert allowed[4] == {6, 7}  # at or right of / below (1, 1), inside the grid
    assert allowed[5] == {0, 1}
    assert allowed[6] == {11}  # two objects written: only EOS
    assert not mask[..., [vocab.bos, vocab.pad]].any()


def test_grammar_mask_by_hand_class_first():
    vocab = Vocabulary(num_classes=2, grid=3)  # classes 0-1, positions 2-10, EOS 11, BOS 12, PAD 13
    tl = 2 + 1 * 3 + 1  # patch (1, 1)
    inputs = torch.tensor([[vocab.bos, 0, 2, 3, 1, tl, 4]])
    mask = grammar_mask(inputs, torch.arange(7), vocab, grid=(2, 3), max_objects=2, class_first=True)
    allowed = [set(torch.nonzero(row).flatten().tolist()) for row in mask[0]]
    in_grid = {2, 3, 4, 5, 6, 7}  # rows 0-1 of a 3-wide vocabulary grid
    assert allowed[0] == {0, 1, 11}  # a class or EOS
    assert allowed[1] == in_grid  # a top-left patch inside the 2x3 input grid
    assert allowed[2] == in_grid  # bottom-right after top-left (0, 0): anywhere
    assert allowed[3] == {0, 1, 11}
    assert allowed[4] == in_grid
    assert allowed[5] == {6, 7}  # at or right of / below (1, 1), inside the grid
    assert allowed[6] == {11}  # two objects written: only EOS
    assert not mask[..., [vocab.bos, vocab.pad]].any()


def test_object_order_rules_and_max_objects():
    # Top-left patches (row, column): (0, 3), (0, 0), (1, 0), (0, 1), (0, 0); areas 100, 1600, 900, 200, 64.
    boxes = torch.tensor([[50.0, 0, 60, 10], [0, 0, 40, 40], [0, 30, 30, 60], [20, 0, 30, 20], [2, 2, 10, 10]])
    tl, _, _ = corner_tokens(boxes, Vocabulary(num_classes=1, grid=4), 16)
    assert object_order(boxes, tl, "area", 10).tolist() == [1, 2, 3, 0, 4]
    assert object_order(boxes, tl, "raster", 10).tolist() == [1, 4, 3, 0, 2]  # same patch: larger first
    assert object_order(boxes, tl, "raster", 2).tolist() == [1, 2]  # the two largest, in raster order
    torch.manual_seed(0)
    shuffled = {tuple(object_order(boxes, tl, "raster", 10, shuffle=True).tolist()) for _ in range(20)}
    assert len(shuffled) > 1 and all(sorted(s) == [0, 1, 2, 3, 4] for s in shuffled)


@pytest.mark.parametrize("token_order", ["corners_class", "class_corners"])
def test_build_sequences_layout(token_order):
    model = tiny_model(max_objects=2, token_order=token_order)
    vocab = model.vocab
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 20, 20], [40, 40, 90, 90], [60, 0, 70, 8]]), "labels": torch.tensor([2, 1, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        # Clipped to the 64 x 80 input, and a box left empty by clipping is dropped.
        {"boxes": torch.tensor([[70.0, 50, 200, 90], [90, 0, 99, 10]]), "labels": torch.tensor([1, 2])},
    ]
    tokens, offset_targets, offset_mask = model.build_sequences(targets, (64, 80), shuffle=False)
    tl, br, off = corner_tokens(torch.tensor([[0.0, 0, 20, 20], [40, 40, 80, 64], [70, 50, 80, 64]]), vocab, 16)
    pad, eos, bos = vocab.pad, vocab.eos, vocab.bos
    first = token_order == "class_corners"
    triple = lambda c, i: [c, tl[i], br[i]] if first else [tl[i], br[i], c]
    # Image 0: the two largest of three objects, raster order; image 1: nothing; image 2: one object.
    assert tokens.tolist() == [
        [bos, *triple(2, 0), *triple(1, 1), eos],
        [bos, eos, pad, pad, pad, pad, pad, pad],
        [bos, *triple(1, 2), eos, pad, pad, pad],
    ]
    # A corner's offset is predicted where the corner is read: input 1 + 3j + its place in the triple.
    at = [2, 3, 5, 6] if first else [1, 2, 4, 5]
    corners = [[i in at for i in range(7)], [False] * 7, [i in at[:2] for i in range(7)]]
    assert offset_mask.tolist() == corners
    assert torch.allclose(offset_targets[0, at], off[:2].reshape(4, 2))
    assert torch.allclose(offset_targets[2, at[:2]], off[2].reshape(2, 2))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        model.build_sequences([{"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([3])}], (64, 64), False)


@pytest.mark.parametrize("token_order", ["corners_class", "class_corners"])
def test_patch_targets_mark_corners_and_centres(token_order):
    model = tiny_model(token_order=token_order, patch_weight=1.0)
    targets = [
        # A big box: corners in patches (0, 0) and (3, 3), centre (26.5, 32) in patch (2, 1); a small
        # one whose top-left shares patch (0, 0): bottom-right (1, 1), centre (15, 20) in (1, 0).
        {"boxes": torch.tensor([[3.0, 4, 50, 60], [10, 10, 20, 30]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 96, dtype=torch.uint8), targets)
    w = 6  # the 64 x 96 input's grid is 4 x 6
    expected = {(0, 0), (3 * w + 3, 1), (2 * w + 1, 2 + 1), (1 * w + 1, 1), (1 * w + 0, 2 + 2)}
    assert set(map(tuple, out["patch_targets"][0].nonzero().tolist())) == expected
    assert out["patch_targets"].shape == (2, 24, 5) and not out["patch_targets"][1].any()
    assert out["patch_logits"].shape == (2, 24, 5)
    losses = model.criterion()(out, targets)
    assert torch.isfinite(losses["loss_patch"]) and losses["loss"] > losses["loss_ce"] + losses["loss_offset"]


def test_teacher_forced_targets_are_always_allowed_by_the_grammar():
    model = tiny_model(max_objects=4).eval()
    g = torch.Generator().manual_seed(0)
    targets = random_targets(g, [0, 1, 4, 7], 64, 96, 3)
    with torch.no_grad():
        out = model(torch.randint(0, 256, (4, 3, 64, 96), dtype=torch.uint8, generator=g), targets)
    target = out["tokens"][:, 1:]
    valid = target != model.vocab.pad
    assert out["allowed"].gather(2, target.clamp(max=model.vocab.size - 1)[..., None])[..., 0][valid].all()
    assert out["tokens"].shape == (4, 1 + 3 * 4 + 1)  # 7 objects, at most 4 written


def test_random_order_changes_order_not_content():
    model = tiny_model(random_order=True, max_objects=6)
    targets = random_targets(torch.Generator().manual_seed(0), [6], 96, 96, 3)
    fixed = model.build_sequences(targets, (96, 96), shuffle=False)

    def objects(tokens, offset_targets) -> list[tuple]:
        """(the three tokens, tl offset, br offset) per object, in sequence order."""
        seq, off = tokens[0].tolist(), offset_targets[0].tolist()
        tl = [1 + 3 * j + model.tl_place for j in range(6)]  # input index of each top-left corner
        return [tuple(seq[3 * j + 1 : 3 * j + 4]) + tuple(off[i] + off[i + 1]) for j, i in enumerate(tl)]

    reference = objects(fixed[0], fixed[1])
    image = torch.zeros(1, 3, 96, 96, dtype=torch.uint8)
    torch.manual_seed(0)
    orders = set()
    model.train()
    for _ in range(6):
        with torch.no_grad():
            out = model(image, targets)
        shuffled = objects(out["tokens"], out["offset_targets"])
        assert sorted(shuffled) == sorted(reference)  # the offsets travel with their objects
        assert torch.equal(out["offset_mask"], fixed[2])
        orders.add(tuple(shuffled))
    assert len(orders) > 1
    model.eval()  # evaluation always uses the fixed order
    with torch.no_grad():
        assert torch.equal(model(image, targets)["tokens"], fixed[0])


# ------------------------------------------------------------------------------------------------
# Every registered variant: the model contract


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    torch.manual_seed(0)
    return request.param, plaindet.create_model(request.param, num_classes=4, image_size=128)


def test_registry_lists_the_variants():
    assert set(VARIANTS) <= set(plaindet.list_models())


def test_parameter_counts():
    with torch.device("meta"):
        ti, s = (plaindet.create_model(name) for name in VARIANTS)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 5.4e6 < count(ti.backbone) < 5.8e6 and 21.5e6 < count(s.backbone) < 22.0e6  # DeiT-Ti, DeiT-S
    assert count(ti) < count(s)


def test_forward_train_and_eval_finite(variant):
    _, model = variant
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g)
    model.train()
    out = model(images, random_targets(g, [3, 0], 64, 96, 4))
    assert out["logits"].shape == (2, 10, model.vocab.size) and torch.isfinite(out["logits"]).all()
    assert torch.isfinite(out["offsets"]).all()
    model.eval()
    with torch.no_grad():
        out = model(images)
        boxes, scores, labels = model.postprocess(out)
    assert out["boxes"].shape == (2, 30, 4) and out["scores"].shape == (2, 30)
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100) and labels.shape == (2, 100)
    assert torch.isfinite(boxes).all() and ((scores >= 0) & (scores <= 1)).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for seq in out["tokens"]:
        check_grammar(seq, model.vocab, (4, 6), 30, model.class_first)


def test_every_parameter_gets_a_gradient(variant):
    name, model = variant
    model.train()
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(1)
    targets = random_targets(g, [3, 1], 64, 96, 4)
    out = model(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g), targets)
    losses = model.criterion()(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert not [n for n, p in params if p.grad is None or not p.grad.any()], name
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    model.zero_grad(set_to_none=True)
    model.eval()


def test_save_load_gives_identical_outputs(variant, tmp_path):
    _, model = variant
    model.eval()
    loaded = plaindet.load(model.save(tmp_path / "m.safetensors"))
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in ("boxes", "scores", "labels", "tokens"):
        assert torch.equal(a[key], b[key]), key


def test_config_round_trips_through_dicts():
    config = tiny_model(random_order=True, decoding="nucleus", top_p=0.5).config
    assert from_dict(PatchTokConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="decoding must be one of"):
        tiny_model(decoding="beam")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_model(image_size=100)


def test_forward_rejects_bad_input_sizes():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.zeros(1, 3, 64, 72, dtype=torch.uint8))
    with pytest.raises(ValueError, match="larger than the model's image_size 96"):
        model(torch.zeros(1, 3, 64, 112, dtype=torch.uint8))


def test_backbone_weights_load_from_a_deit_file(tmp_path):
    from safetensors.torch import save_file

    from plaindet.models.vit import ViT, deit_config

    torch.manual_seed(5)
    deit = ViT(deit_config(48, 2, 2))
    path = tmp_path / "deit.safetensors"
    save_file(deit.state_dict() | {"head.weight": torch.zeros(10, 48), "head.bias": torch.zeros(10)}, str(path))
    model = plaindet.create_model(
        "patchtok-ti", num_classes=3, image_size=96, backbone_weights=str(path), backbone_trainable=False, **TINY
    )
    for k, v in deit.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert plaindet.load(model.save(tmp_path / "m.safetensors")).config.backbone_trainable is False


# ------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("token_order", ["corners_class", "class_corners"])
def test_cached_decoding_equals_a_full_causal_pass(token_order):
    # The key/value cache must give what recomputing the whole prefix would: re-reading the greedy
    # sequence with one causal pass reproduces every choice, every offset and every score.
    model = tiny_model(max_objects=4, token_order=token_order).eval()
    vocab, K = model.vocab, 3
    with torch.no_grad():
        # Keep EOS away so that all four objects are decoded: its logit gets 4 * -100 / sqrt(64) = -50.
        model.norm.bias[0] = 4.0
        model.token_embed.weight[vocab.eos, 0] = -100.0
        image = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
        out = model(image)
        tokens = out["tokens"]
        assert (tokens[:, 1:13] < vocab.eos).all(), "expected four objects to check"
        memory, grid = model.encode(image)
        hidden, _ = model._decode(tokens[:, :13], 0, [layer.cross_attn.keys_values(memory, memory) for layer in model.layers])
        allowed = grammar_mask(tokens[:, :13], torch.arange(13), vocab, grid, 4, model.class_first)
        logits = model._logits(hidden, memory, grid).masked_fill(~allowed, float("-inf"))
        assert torch.equal(logits.argmax(-1), tokens[:, 1:14])
        # Probabilities given an object (EOS left out), and 1 - P(EOS) at each object's first token.
        probs = logits[..., : vocab.eos].softmax(-1)
        objectness = 1 - logits.softmax(-1)[:, 0:12:3, vocab.eos]
        offsets = model._offsets(hidden, memory, tokens[:, :13], grid)
    c, t = model.class_place, model.tl_place
    tl, br = tokens[:, 1 + t : 13 : 3], tokens[:, 2 + t : 13 : 3]
    corner_offsets = torch.cat([offsets[:, 1 + t : 13 : 3], offsets[:, 2 + t : 13 : 3]], dim=-1)
    boxes = boxes_from_corners(tl, br, corner_offsets, vocab, 16)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([96.0, 64, 96, 64]))
    valid = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    p_tl = probs[:, t:12:3].gather(2, tl[..., None])[..., 0]
    p_br = probs[:, t + 1 : 12 : 3].gather(2, br[..., None])[..., 0]
    class_scores = probs[:, c:12:3, :K] * (objectness * (p_tl * p_br).sqrt() * valid)[..., None]
    assert torch.allclose(out["boxes"], boxes * valid[..., None], atol=1e-4)
    assert torch.allclose(out["class_scores"], class_scores, atol=1e-5)
    labels = tokens[:, 1 + c : 13 : 3]
    assert torch.equal(out["labels"], labels * valid)
    assert torch.allclose(out["scores"], class_scores.gather(2, labels[..., None])[..., 0], atol=1e-5)


def test_fill_slots_extends_the_greedy_sequence_with_lower_ranked_objects():
    # Never choosing EOS changes nothing before the step where the model would have stopped; the
    # objects after it are scored with the EOS probability they overrode, so they rank lower.
    model = tiny_model(max_objects=5).eval()
    image = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model.token_embed.weight[model.vocab.eos, 0] = 30.0  # make EOS likely, so the greedy sequences are short
        model.norm.bias[0] = 1.0
        plain = model(image)
        model.config.fill_slots = True
        filled = model(image)
    eos = model.vocab.eos
    for p_seq, f_seq in zip(plain["tokens"], filled["tokens"]):
        n = check_grammar(p_seq, model.vocab, (4, 6), 5, model.class_first)
        assert check_grammar(f_seq, model.vocab, (4, 6), 5, model.class_first) == 5
        assert torch.equal(p_seq[: 1 + 3 * n], f_seq[: 1 + 3 * n]) and p_seq[1 + 3 * n] == eos
    assert (plain["tokens"][:, 1] == eos).any(), "expected a sequence that the plain decoding ends at once"
    assert torch.allclose(filled["class_scores"] * (plain["scores"] > 0)[..., None], plain["class_scores"], atol=1e-6)


def test_multi_label_postprocess_ranks_every_class_of_every_box():
    model = tiny_model(max_objects=4, multi_label=True).eval()
    class_scores = torch.tensor([[[0.1, 0.6, 0.3], [0.0, 0.0, 0.0], [0.5, 0.2, 0.05], [0.0, 0.0, 0.0]]])
    boxes = torch.arange(16.0).reshape(1, 4, 4)
    outputs = {"boxes": boxes, "class_scores": class_scores, "scores": class_scores.amax(-1), "labels": class_scores.argmax(-1)}
    b, s, lab = model.postprocess(outputs, max_detections=5)
    assert s[0].tolist() == pytest.approx([0.6, 0.5, 0.3, 0.2, 0.1])
    assert lab[0].tolist() == [1, 0, 2, 1, 0]
    assert torch.equal(b[0], boxes[0, [0, 2, 0, 2, 0]])
    model.config.multi_label = False  # one detection per box: the decoded label's score
    b, s, lab = model.postprocess(outputs, max_detections=5)
    assert s[0, :2].tolist() == pytest.approx([0.6, 0.5]) and lab[0, :2].tolist() == [1, 0] and (s[0, 2:] == 0).all()


@pytest.mark.parametrize("decoding", ["greedy", "topk", "nucleus"])
def test_decoding_modes_give_valid_sequences(decoding):
    model = tiny_model(decoding=decoding, temperature=2.0, top_k=3, top_p=0.8, max_objects=5).eval()
    image = torch.randint(0, 256, (3, 3, 48, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    objects = 0
    with torch.no_grad():
        # Make EOS unlikely (as in the cache test), so that random weights write objects to check.
        model.norm.bias[0] = 4.0
        model.token_embed.weight[model.vocab.eos, 0] = -100.0
        for _ in range(3):
            out = model(image)
            boxes, scores, labels = model.postprocess(out, max_detections=8)
            assert boxes.shape == (3, 8, 4) and scores.shape == (3, 8)
            for seq, b, s, lab in zip(out["tokens"], boxes, scores, labels):
                n = check_grammar(seq, model.vocab, (3, 5), 5, model.class_first)
                objects += n
                kept = s > 0
                assert kept.sum() <= 3 * n and ((lab >= 0) & (lab < 3)).all()  # multi_label: each class of each box
                assert (b[kept, 2] > b[kept, 0]).all() and (b[kept, 3] > b[kept, 1]).all()
                assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= 80).all() and (b[:, 1::2] <= 48).all()
                assert (b[~kept] == 0).all()
    assert objects > 0


def test_sampling_rules():
    model = tiny_model()
    logits = torch.tensor([[2.0, 1.0, 0.5, float("-inf"), -1.0]]).repeat(400, 1)
    torch.manual_seed(0)
    model.config.decoding = "topk"
    model.config.top_k = 2
    assert set(model._choose(logits).tolist()) == {0, 1}
    model.config.top_k = 1
    assert set(model._choose(logits).tolist()) == {0}
    model.config.decoding = "nucleus"
    model.config.top_p = 0.01  # the most likely token alone
    assert set(model._choose(logits).tolist()) == {0}
    # p = .61, .22, .14, 0, .03: the smallest set holding 0.8 is the first two, for 0.85 three.
    model.config.top_p = 0.8
    assert set(model._choose(logits).tolist()) == {0, 1}
    model.config.top_p = 0.85
    assert set(model._choose(logits).tolist()) == {0, 1, 2}
    model.config.decoding = "greedy"
    assert set(model._choose(logits).tolist()) == {0}


# ------------------------------------------------------------------------------------------------
# Learning


@pytest.fixture(scope="module")
def overfit():
    """A tiny model trained for 100 steps on one image, and its first and last losses."""
    model = tiny_model()
    image, targets = scene()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    criterion = model.criterion()
    model.train()
    losses = []
    for _ in range(100):
        loss = criterion(model(image, targets), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_overfits_one_image(overfit):
    model, losses = overfit
    assert losses[-1] < 0.05 * losses[0]
    image, _ = scene()
    with torch.no_grad():
        boxes, scores, labels = model.postprocess(model(image), max_detections=5)
    # multi_label: the other classes of the three boxes follow, with what is left of their class probability.
    assert (scores[0, :3] > 0.5).all() and (scores[0, 3:] < 0.05).all()
    found = sorted(zip(labels[0, :3].tolist(), boxes[0, :3].tolist()))
    assert [k for k, _ in found] == [0, 1, 2]
    # The sub-patch offsets put the corners within 1.5 px; snapped to the 16 px grid they could be 8 off.
    assert torch.allclose(torch.tensor([b for _, b in found]), BOXES, atol=1.5)


def test_predict_maps_back_to_original_pixels(overfit):
    model, _ = overfit
    image, _ = scene()
    # Twice the size: predict resizes to the model's 96 px and maps the boxes back.
    big = torch.nn.functional.interpolate(image.float(), scale_factor=2, mode="nearest")[0].to(torch.uint8)
    result = model.predict(big, threshold=0.5)
    order = np.argsort(result.labels)
    assert result.labels[order].tolist() == [0, 1, 2]
    np.testing.assert_allclose(result.boxes[order], 2 * BOXES.numpy(), atol=4.0)


def test_bfloat16_autocast(overfit):
    model, _ = overfit
    image, targets = scene()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.criterion()(model(image, targets), targets)["loss"]
        boxes, _, labels = model.postprocess(model(image))
    assert torch.isfinite(loss) and torch.isfinite(boxes).all() and sorted(labels[0, :3].tolist()) == [0, 1, 2]
