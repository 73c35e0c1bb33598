"""Stage-0 vision pre-training: per-patch and per-token targets follow the pixels through the
crop geometry, the stage learns, and its vision side reaches the pointing trainer."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.data.synthetic import SceneConfig, make_scene  # noqa: E402
from videomolmo_ros.model.preprocessing import make_crop_layout  # noqa: E402
from videomolmo_ros.train.presets import tiny  # noqa: E402
from videomolmo_ros.train.testing import TINY_SCENE, small_tokenizer, tiny_data  # noqa: E402
from videomolmo_ros.train.trainer import TrainConfig, Trainer  # noqa: E402
from videomolmo_ros.train.vision_pretrain import (  # noqa: E402
    ATTRIBUTES, MOTION_CLASSES, WEIGHTS_NAME, PretrainConfig, dense_targets, main, pretrain,
    view_coverage, view_positions)

torch.set_num_threads(1)


def test_coverage_of_the_left_half_lands_on_the_left_patches_of_every_crop():
    config = tiny()  # up to 4 crops: the crop windows are checked too
    height, width = 120, 200
    layout = make_crop_layout(height, width, config)
    assert layout.num_crops > 2
    left = np.zeros((1, height, width), bool)
    left[:, :, : width // 2] = True
    coverage = view_coverage(left, layout, config)[..., 0]  # (T, P)
    in_frame = view_coverage(np.ones_like(left), layout, config)[..., 0]
    positions = view_positions(layout, config)  # (T, P, 2), fractions of the frame
    inside = ((positions >= 0) & (positions <= 1)).all(-1)
    assert coverage.shape == positions.shape[:2] == (layout.num_crops, 64)
    clearly_left = inside & (positions[..., 0] < 0.4)
    clearly_right = inside & (positions[..., 0] > 0.6)
    assert clearly_left.sum() > 0 and clearly_right.sum() > 0
    np.testing.assert_allclose(coverage[clearly_left], in_frame[clearly_left], atol=0.02)
    assert coverage[clearly_right].max() < 0.05
    assert in_frame[inside].max() == pytest.approx(1.0)
    assert in_frame[~inside].max() < 0.5  # padding around the frame is not the object


def test_patch_positions_span_the_frame_in_the_global_view():
    config = tiny()
    layout = make_crop_layout(72, 96, config)
    positions = view_positions(layout, config)[0].reshape(8, 8, 2)
    # x grows along a row, y down a column; the frame fills the width of the global view.
    assert np.all(np.diff(positions[..., 0], axis=1) > 0)
    assert np.all(np.diff(positions[..., 1], axis=0) > 0)
    assert positions[0, 0, 0] == pytest.approx(1 / 16) and positions[0, -1, 0] == \
        pytest.approx(15 / 16)


def clearly_visible(scene, t, positions):
    """(object, its point as a fraction of the frame, the global-view patch holding it) for the
    objects of frame t with at least 400 visible pixels."""
    for obj in scene.objects:
        points = scene.points_for([obj.object_id], t)
        if not points or scene.masks[t, obj.object_id].sum() < 400:
            continue
        point = np.array([points[0].x / scene.width, points[0].y / scene.height])
        yield obj, point, int(np.abs(positions - point).sum(-1).argmin())


def test_targets_name_the_object_under_its_own_point():
    config = tiny()
    scene = make_scene(SceneConfig(seed=3))
    layout = make_crop_layout(scene.height, scene.width, config)
    t = 5
    frame_targets = dense_targets(scene, t, layout, config)
    targets = frame_targets.patches
    positions = targets.position[0].numpy()  # global view
    checked = 0
    for obj, point, patch in clearly_visible(scene, t, positions):
        assert bool(targets.owned[0, patch])
        for name, values in ATTRIBUTES.items():
            assert int(targets.classes[name][0, patch]) == values.index(getattr(obj, name)) + 1
        assert int(targets.classes["motion"][0, patch]) == MOTION_CLASSES.index(obj.motion) + 1
        assert targets.point[0, patch].numpy() == pytest.approx(point, abs=1e-6)
        checked += 1
    assert checked >= 2
    assert (targets.classes["color"][~targets.owned] == 0).all()
    assert (targets.classes["motion"][~targets.owned] == 0).all()
    assert {o.motion for o, _, _ in clearly_visible(scene, t, positions)} - {"static"}
    # Tokens (2x2 windows of patches) sit at their window's centre, and the token holding an
    # object's point is owned: by that object, unless another covers more of the window.
    tokens = frame_targets.tokens
    assert tokens.owned.shape == (layout.num_crops, 16)
    token_positions = tokens.position[0].reshape(4, 4, 2).numpy()
    patch_positions = positions.reshape(4, 2, 4, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(token_positions, patch_positions, atol=1e-6)
    matches = 0
    for obj, _, patch in clearly_visible(scene, t, positions):
        row, col = divmod(patch, 8)
        token = (row // 2) * 4 + col // 2
        assert bool(tokens.owned[0, token])
        matches += int(tokens.classes["color"][0, token]) == \
            ATTRIBUTES["color"].index(obj.color) + 1
    assert matches >= 2


def test_pretraining_learns_and_the_trainer_starts_from_its_vit(tmp_path):
    out = tmp_path / "stage0"
    config = PretrainConfig(output_dir=str(out), preset="tiny", scene=dict(TINY_SCENE),
                            steps=30, frames_per_step=8, frames_per_scene=4, lr=3e-3,
                            warmup_steps=3, held_out_scenes=2)
    pretrain(config, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 30
    assert np.mean([r["loss"] for r in log[-5:]]) < 0.7 * np.mean([r["loss"] for r in log[:5]])
    recipe = json.loads((out / "vision_pretrain.json").read_text())
    held_out = recipe["held_out"]
    assert 0 <= held_out["token_color_acc"] <= 1 and 0 <= held_out["patch_point_error"] < 1
    assert recipe["config"]["steps"] == 30

    tokenizer_dir = tmp_path / "tokenizer"
    small_tokenizer().save_pretrained(str(tokenizer_dir))
    run = TrainConfig(output_dir=str(tmp_path / "run"), preset="tiny", data=tiny_data(), steps=1,
                      batch_frames=1, grad_accum=1, tokenizer=str(tokenizer_dir),
                      init_vision_from=str(out))
    trainer = Trainer(run)
    from safetensors.torch import load_file

    saved = load_file(str(out / WEIGHTS_NAME))
    vision = trainer.model.vision_backbone.state_dict()
    kept = {k for k in vision if not k.startswith("adapter.")}  # the temporal module is not
    assert set(saved) == {"vision_backbone." + k for k in kept}  # part of stage 0
    assert any(k.startswith("image_projector.") for k in kept)
    for name in kept:
        torch.testing.assert_close(vision[name], saved["vision_backbone." + name])
    # The temporal module starts as the identity (f^ = f): the run begins as the stage-0 model.
    assert trainer.model.vision_backbone.adapter is not None
    assert not trainer.model.vision_backbone.adapter.wo.weight.any()


def test_a_vit_of_another_size_is_refused(tmp_path):
    out = tmp_path / "stage0"
    pretrain(PretrainConfig(output_dir=str(out), preset="tiny", scene=dict(TINY_SCENE), steps=1,
                            frames_per_step=2, frames_per_scene=2, held_out_scenes=1),
             progress=False)
    tokenizer_dir = tmp_path / "tokenizer"
    small_tokenizer().save_pretrained(str(tokenizer_dir))
    run = TrainConfig(output_dir=str(tmp_path / "run"), preset="tiny", data=tiny_data(), steps=1,
                      tokenizer=str(tokenizer_dir), init_vision_from=str(out),
                      model_overrides={"vision_backbone": {"image_emb_dim": 48,
                                                           "image_head_dim": 12}})
    with pytest.raises(RuntimeError, match="size mismatch|do not match"):
        Trainer(run)


def test_command_line_writes_the_vit(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--preset", "tiny", "--scene", json.dumps(TINY_SCENE),
                 "--steps", "2", "--frames-per-step", "2", "--frames-per-scene", "2",
                 "--no-progress"]) == 0
    assert (out / WEIGHTS_NAME).is_file()
    assert "token_point_error" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def four_units(owned: list[bool], labels: list[int]):
    """Random 8-wide features of one frame of four units, and targets giving every attribute
    the class ``labels`` (0 = background) on the ``owned`` units."""
    from videomolmo_ros.train.vision_pretrain import DenseTargets

    torch.manual_seed(0)
    classes = {name: torch.tensor([[labels]]) for name in ATTRIBUTES}
    return torch.randn(1, 1, 4, 8), DenseTargets(classes, torch.zeros(1, 1, 4, 2),
                                                 torch.tensor([[owned]]), torch.zeros(1, 1, 4, 2))


def test_object_attribute_losses_score_object_units_alone():
    from videomolmo_ros.train.vision_pretrain import DenseHeads

    features, targets = four_units([True, False, False, False], [2, 0, 0, 0])
    plain = DenseHeads(8)
    weighted = DenseHeads(8, object_attributes=True)
    weighted.load_state_dict(plain.state_dict())
    _, plain_terms = plain.losses(features, targets)
    _, terms = weighted.losses(features, targets)
    for name in ATTRIBUTES:
        assert terms[name] == pytest.approx(plain_terms[name])
        logits = weighted.classifiers[name](features)[0, 0, 0]
        expected = -torch.log_softmax(logits, -1)[2]  # the one object unit only
        assert terms[f"{name}_objects"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert not any(k.endswith("_objects") for k in plain_terms)


def test_attribute_weights_scale_that_attributes_terms_alone():
    from videomolmo_ros.train.vision_pretrain import DenseHeads

    features, targets = four_units([True, True, False, False], [1, 2, 0, 0])
    plain = DenseHeads(8, object_attributes=True)
    shaped = DenseHeads(8, object_attributes=True, attribute_weights={"shape": 5.0})
    shaped.load_state_dict(plain.state_dict())
    total_plain, plain_terms = plain.losses(features, targets)
    total, terms = shaped.losses(features, targets)
    for key, value in plain_terms.items():
        factor = 5.0 if key in ("shape", "shape_objects") else 1.0
        assert terms[key] == pytest.approx(factor * value, rel=1e-5)
    extra = 4.0 * (plain_terms["shape"] + plain_terms["shape_objects"])
    assert float(total) == pytest.approx(float(total_plain) + extra, rel=1e-5)
    with pytest.raises(ValueError, match="no attribute"):
        DenseHeads(8, attribute_weights={"shapes": 2.0})


def test_geometry_weight_scales_the_point_and_position_terms_alone():
    from videomolmo_ros.train.vision_pretrain import DenseHeads

    features, targets = four_units([True, True, False, False], [1, 2, 0, 0])
    plain = DenseHeads(8, object_attributes=True)
    for weight in (0.0, 3.0):
        scaled = DenseHeads(8, object_attributes=True, geometry_weight=weight)
        scaled.load_state_dict(plain.state_dict())
        _, plain_terms = plain.losses(features, targets)
        _, terms = scaled.losses(features, targets)
        assert plain_terms["point"] > 0 and plain_terms["position"] > 0
        for key, value in plain_terms.items():
            factor = weight if key in ("point", "position") else 1.0
            assert terms[key] == pytest.approx(factor * value, rel=1e-5)
    with pytest.raises(ValueError, match="geometry_weight"):
        DenseHeads(8, geometry_weight=-1.0)


@pytest.mark.parametrize("weights", ['{"shap": 5}', '{"shape": -1}', "shape=5", '[5]'])
def test_command_line_refuses_bad_attribute_weights(tmp_path, capsys, weights):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "bad"), "--preset", "tiny", "--steps", "1",
              "--attribute-weights", weights, "--no-progress"])
    assert exit_info.value.code == 2
    assert "--attribute-weights" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_curriculum_scenes_feed_the_first_steps_and_only_those(tmp_path, monkeypatch):
    from videomolmo_ros.train import vision_pretrain

    seen: list[tuple[dict, int, int]] = []  # (scene overrides, first frame, frames)
    original = vision_pretrain.FrameStream.frames

    def recording(self, first, count):
        seen.append((dict(self.scene), first, count))
        return original(self, first, count)

    monkeypatch.setattr(vision_pretrain.FrameStream, "frames", recording)
    single = {**TINY_SCENE, "num_objects": [1, 1]}
    pretrain(PretrainConfig(output_dir=str(tmp_path / "cur"), preset="tiny",
                            scene=dict(TINY_SCENE), steps=5, frames_per_step=2,
                            frames_per_scene=2, held_out_scenes=1, curriculum_scene=single,
                            curriculum_steps=3), progress=False)
    held_out, training = seen[0], [s for s in seen[1:] if s[2] == 2]
    assert held_out[0] == TINY_SCENE
    assert [s[0] for s in training] == [single] * 3 + [TINY_SCENE] * 2
    assert [s[1] for s in training] == [0, 2, 4, 6, 8]  # one stream of steps, not restarted


def test_scene_and_curriculum_flags_are_checked(capsys):
    for args, message in ((["--curriculum-scene", "{"], "is not JSON"),
                          (["--scene", '{"num_objects": [1, 2'], "--scene is not JSON"),
                          (["--scene", '{"colour": "red"}'], "--scene must be a JSON object"),
                          (["--model-overrides", "{x"], "--model-overrides is not JSON"),
                          (["--model-overrides", "[]"], "must be a JSON object"),
                          (["--curriculum-scene", '{"objects": 1}'], "JSON object of some of"),
                          (["--curriculum-scene", "[1]"], "JSON object of some of"),
                          (["--steps", "4", "--curriculum-steps", "5"], "between 0 and --steps"),
                          (["--curriculum-steps", "-1"], "between 0 and --steps"),
                          (["--geometry-weight", "-0.5"], "--geometry-weight must be >= 0"),
                          (["--schedule", "linear"], "invalid choice: 'linear'"),
                          (["--add-conv-stem"], "adds the branch to a trained model")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", "unused", *args])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_schedule_keeps_the_rate_flat_or_decays_it(tmp_path, schedule):
    out = tmp_path / schedule
    pretrain(PretrainConfig(output_dir=str(out), preset="tiny", scene=dict(TINY_SCENE), steps=5,
                            frames_per_step=1, frames_per_scene=1, held_out_scenes=1,
                            lr=1e-3, warmup_steps=2, schedule=schedule), progress=False)
    rates = [json.loads(line)["lr"] for line in (out / "log.jsonl").open()]
    assert rates[:3] == pytest.approx([0.0, 5e-4, 1e-3])  # the warm-up
    if schedule == "constant":
        assert rates[3:] == pytest.approx([1e-3, 1e-3])
    else:
        assert 1e-3 > rates[3] > rates[4] > 0


def test_an_unknown_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="schedule must be one of cosine, constant"):
        pretrain(PretrainConfig(output_dir=str(tmp_path / "x"), preset="tiny",
                                scene=dict(TINY_SCENE), steps=1, schedule="linear"),
                 progress=False)
    assert not (tmp_path / "x").exists()


def _tiny_trained_model(tmp_path):
    """A tiny model after one pointing step, saved in the release layout: a start for stage 0."""
    tokenizer_dir = tmp_path / "tokenizer"
    small_tokenizer().save_pretrained(str(tokenizer_dir))
    base = tmp_path / "base"
    Trainer(TrainConfig(output_dir=str(base), preset="tiny", data=tiny_data(), steps=1,
                        batch_frames=1, grad_accum=1, tokenizer=str(tokenizer_dir))).train()
    return base


@pytest.mark.parametrize("at, embedding", [("embedding", "linear+conv"),
                                           ("features", "linear+conv-features")])
def test_a_stage_0_from_a_trained_model_trains_its_conv_branch_alone_and_the_model_takes_it(
        tmp_path, at, embedding):
    from safetensors.torch import load_file

    from videomolmo_ros.model import loading
    from videomolmo_ros.train.vision_pretrain import VISION_PREFIX

    base = _tiny_trained_model(tmp_path)
    stem = tmp_path / "stem"
    pretrain(PretrainConfig(output_dir=str(stem), init_from=str(base), add_conv_stem=True,
                            conv_stem_at=at, trainable="stem", scene=dict(TINY_SCENE), steps=3,
                            frames_per_step=2,
                            frames_per_scene=2, held_out_scenes=1, lr=1e-2, warmup_steps=0),
             progress=False)
    saved = load_file(str(stem / WEIGHTS_NAME))
    branch = {k for k in saved if ".conv_stem." in k}
    assert branch and saved[VISION_PREFIX + "image_vit.conv_stem.linear.weight"].any()  # learnt
    before = loading.load_videomolmo(str(base)).vision_backbone.state_dict()
    for name in set(saved) - branch:  # everything the model's LLM reads is as it was
        torch.testing.assert_close(saved[name], before[name[len(VISION_PREFIX):]])
    recipe = json.loads((stem / "vision_pretrain.json").read_text())
    assert recipe["model_config"]["vision_backbone"]["image_patch_embedding"] == embedding

    # The next pointing stage: the model's LLM, the stage 0's vision side.
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path / "run"), data=tiny_data(), steps=1,
                                  init_from=str(base), init_vision_from=str(stem),
                                  add_conv_stem=True, conv_stem_at=at))
    vision = trainer.model.vision_backbone.state_dict()
    for name, value in saved.items():
        torch.testing.assert_close(vision[name[len(VISION_PREFIX):]], value)
    llm = loading.load_videomolmo(str(base)).state_dict()
    for name, value in trainer.model.state_dict().items():
        if not name.startswith(VISION_PREFIX):
            torch.testing.assert_close(value, llm[name])

    # --stem-output-scale 0: the stage 0's conv layers, their output layer at zero, so the
    # started model encodes a frame exactly as the base model did.
    quiet = Trainer(TrainConfig(output_dir=str(tmp_path / "quiet"), data=tiny_data(), steps=1,
                                init_from=str(base), init_vision_from=str(stem),
                                add_conv_stem=True, conv_stem_at=at, stem_output_scale=0.0))
    branch = quiet.model.vision_backbone.image_vit.conv_stem
    assert not branch.linear.weight.any() and not branch.linear.bias.any()
    torch.testing.assert_close(branch.stem[0].weight,
                               saved[VISION_PREFIX + "image_vit.conv_stem.stem.0.weight"])
    crops = quiet.batches(0)[0].crops
    with torch.no_grad():
        torch.testing.assert_close(quiet.model.eval().encode_frame(crops),
                                   loading.load_videomolmo(str(base)).encode_frame(crops))
        assert not torch.allclose(trainer.model.eval().encode_frame(crops),
                                  quiet.model.encode_frame(crops))


def test_keep_tokens_holds_the_image_tokens_near_the_starting_models(tmp_path):
    from videomolmo_ros.model import loading
    from videomolmo_ros.model.vision import add_conv_stem
    from videomolmo_ros.train.vision_pretrain import (FrameStream, VisionPretrainer,
                                                     frozen_reference)

    base = _tiny_trained_model(tmp_path)
    model = loading.load_videomolmo(str(base))
    add_conv_stem(model.vision_backbone.image_vit)
    # The branch adds nothing yet, so the reference leaves it out and gives the same tokens.
    reference = frozen_reference(model.vision_backbone)
    assert reference.image_vit.conv_stem is None
    assert not any(p.requires_grad for p in reference.parameters())
    crops, _ = FrameStream(dict(TINY_SCENE), 2, 0, model.config).frames(0, 2)
    pretrainer = VisionPretrainer(model.config, backbone=model.vision_backbone, keep_tokens=1.0)
    _, tokens = pretrainer(crops)
    assert float(pretrainer.token_drift(crops, tokens).detach()) == pytest.approx(0.0, abs=1e-10)
    pretrainer.train()
    assert not pretrainer.reference.training  # a fixed target in every mode

    def drift(keep: float) -> float:
        out = tmp_path / f"keep{keep}"
        scores = pretrain(PretrainConfig(
            output_dir=str(out), init_from=str(base), add_conv_stem=True, trainable="stem",
            scene=dict(TINY_SCENE), steps=6, frames_per_step=2, frames_per_scene=2,
            held_out_scenes=1, lr=3e-2, warmup_steps=0, keep_tokens=keep), progress=False)
        logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert logged[0]["token_drift"] == pytest.approx(0.0, abs=1e-10)  # zero branch at first
        assert logged[-1]["token_drift"] > 0  # the branch learnt and moved the tokens
        return scores["token_drift"]

    assert drift(1000.0) < 0.5 * drift(1e-6)  # measured: 0.004 against 0.06


@pytest.mark.parametrize("overrides, message", [
    ({"add_conv_stem": True}, "adds the branch to a trained model"),
    ({"trainable": "stem"}, "trains the conv branch that add_conv_stem adds"),
    ({"trainable": "head"}, "trainable must be one of all, stem"),
    ({"init_from": "some/model", "add_conv_stem": True, "conv_stem_at": "pooling"},
     "conv_stem_at must be one of embedding, features"),
    ({"init_from": "some/model", "preset": "tiny"}, "uses that model's config"),
    ({"init_from": "some/model", "model_overrides": {"hidden_size": 8}}, "uses that model's"),
    ({"keep_tokens": 1.0}, "keeps a trained model's tokens"),
    ({"init_from": "some/model", "keep_tokens": -1.0}, "keep_tokens must be >= 0")])
def test_an_inconsistent_start_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                      overrides, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        pretrain(PretrainConfig(output_dir=str(out), **overrides), progress=False)
    assert not out.exists()


def test_command_line_refuses_a_model_it_cannot_load(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for model in (tmp_path / "missing", tmp_path / "empty"):
        assert main(["--out", str(tmp_path / "out"), "--init-from", str(model),
                     "--add-conv-stem", "--no-progress"]) == 2
        assert f"cannot start from {model}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
