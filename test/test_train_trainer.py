"""The trainer: parameter groups, loss goes down, reproducible and exactly resumable runs, the
command line, and a final model that ``VideoMolmoPointer.from_pretrained`` loads."""
from __future__ import annotations

import dataclasses
import json
import shlex

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model import loading  # noqa: E402
from videomolmo_ros.model.pointer import VideoMolmoPointer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402
from videomolmo_ros.model.vision import add_conv_stem  # noqa: E402
from videomolmo_ros.train.__main__ import main  # noqa: E402
from videomolmo_ros.train.dataset import (CAPTION_PROMPT, PointingDataset,  # noqa: E402
                                          collate)
from videomolmo_ros.train.presets import preset, tiny  # noqa: E402
from videomolmo_ros.train.testing import TINY_SCENE, small_tokenizer, tiny_data  # noqa: E402
from videomolmo_ros.train.trainer import (HEAD_WARMUP_LOG, LOG_NAME,  # noqa: E402
                                          STATE_NAME, TrainConfig, Trainer, answer_loss, clip_gradients,
                                          latest_checkpoint, parameter_groups)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    small_tokenizer().save_pretrained(str(directory))
    return str(directory)


def run_config(out, tokenizer_dir, **overrides) -> TrainConfig:
    values = dict(output_dir=str(out), preset="tiny", data=tiny_data(), steps=4, batch_frames=1,
                  grad_accum=2, warmup_steps=1, save_every=2, tokenizer=tokenizer_dir,
                  lr_llm=3e-3, lr_vision=3e-3)
    values.update(overrides)
    return TrainConfig(**values)


def test_parameter_groups_split_llm_and_vision():
    model = VideoMolmoModel(tiny())
    groups = parameter_groups(model, 1e-3, 5e-4, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["llm", "vision", "llm_nodecay", "vision_nodecay"]
    assert [g["lr"] for g in groups] == [1e-3, 5e-4, 1e-3, 5e-4]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1, 0.0, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert all(p.dim() == 1 or p is model.vision_backbone.image_vit.positional_embedding
               for g in groups[2:] for p in g["params"])
    vision = {id(p) for g in groups[1::2] for p in g["params"]}
    for module in ("image_vit", "adapter", "image_pooling_2d", "image_projector"):
        sub = getattr(model.vision_backbone, module)
        assert all(id(p) in vision for p in sub.parameters())
    assert id(model.lm_head.weight) not in vision


def test_parameter_groups_give_the_conv_stem_its_own_rate():
    model = VideoMolmoModel(tiny())
    assert add_conv_stem(model.vision_backbone.image_vit)
    stem = {id(p) for p in model.vision_backbone.image_vit.conv_stem.parameters()}
    groups = parameter_groups(model, 1e-3, 5e-4, weight_decay=0.1, lr_stem=2e-2)
    assert [g["name"] for g in groups] == ["llm", "vision", "llm_nodecay", "vision_nodecay",
                                           "vision_stem", "vision_stem_nodecay"]
    assert [g["lr"] for g in groups] == [1e-3, 5e-4, 1e-3, 5e-4, 2e-2, 2e-2]
    assert {id(p) for g in groups[4:] for p in g["params"]} == stem
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    assert set(clip_gradients(groups, 1.0, clip_by="side")) == {"llm", "vision", "vision_stem"}
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    # without lr_stem the branch is simply part of the vision side
    plain = parameter_groups(model, 1e-3, 5e-4)
    assert [g["name"] for g in plain][-1] == "vision_nodecay"
    assert stem <= {id(p) for g in plain[1::2] for p in g["params"]}


def _groups_with_gradients(head_scale: float) -> list[dict]:
    """The tiny model's groups plus a training-only head, every gradient set by a seed; the
    head's gradient scaled by ``head_scale`` (a read-out loss far larger than the answer's)."""
    model = VideoMolmoModel(tiny())
    head = torch.nn.Linear(8, 8)
    groups = parameter_groups(model, 1e-3, 1e-3) + [{"params": list(head.parameters()),
                                                    "name": "readout_heads"}]
    generator = torch.Generator().manual_seed(0)
    for group in groups:
        for param in group["params"]:
            param.grad = torch.randn(param.shape, generator=generator) * 1e-2
    for param in head.parameters():
        param.grad *= head_scale
    return groups


def test_clipping_per_side_keeps_a_large_head_gradient_from_shrinking_the_llm_step():
    quiet, loud = _groups_with_gradients(1.0), _groups_with_gradients(1e4)
    norms = clip_gradients(quiet, 1.0, "side")
    assert set(norms) == {"llm", "vision", "readout_heads"}
    assert clip_gradients(loud, 1.0, "side")["readout_heads"] > 100 * norms["readout_heads"]
    for a, b in zip(quiet[:4], loud[:4]):  # the model's groups: the same step either way
        for p, q in zip(a["params"], b["params"]):
            assert torch.equal(p.grad, q.grad)
    for group in loud:  # every unit within its budget
        assert torch.linalg.vector_norm(torch.cat(
            [p.grad.flatten() for p in group["params"]])) <= 1.0 + 1e-4


def test_clipping_all_together_lets_the_largest_gradient_set_every_step():
    quiet, loud = _groups_with_gradients(1.0), _groups_with_gradients(1e4)
    assert set(clip_gradients(loud, 1.0, "all")) == {"all"}
    clip_gradients(quiet, 1.0, "all")
    llm_quiet = torch.cat([p.grad.flatten() for p in quiet[0]["params"]]).norm()
    llm_loud = torch.cat([p.grad.flatten() for p in loud[0]["params"]]).norm()
    assert llm_loud < llm_quiet / 100  # the defect "side" removes


def test_a_checkpoint_recorded_before_clip_by_resumes_only_as_all(tmp_path, tokenizer_dir):
    config = run_config(tmp_path / "run", tokenizer_dir, steps=2, save_every=2, clip_by="all")
    Trainer(config).train(progress=False)
    checkpoint = latest_checkpoint(tmp_path / "run")
    state = torch.load(checkpoint / STATE_NAME, weights_only=True)
    del state["config"]["clip_by"]  # as written by the code before the option
    torch.save(state, checkpoint / STATE_NAME)
    Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=4, clip_by="all"), resume=True)
    with pytest.raises(ValueError, match="clip_by"):
        Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=4), resume=True)


def test_a_checkpoint_recorded_before_kind_weights_resumes_only_without_them(tmp_path,
                                                                           tokenizer_dir):
    Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=2, save_every=2)).train(
        progress=False)
    checkpoint = latest_checkpoint(tmp_path / "run")
    state = torch.load(checkpoint / STATE_NAME, weights_only=True)
    del state["config"]["data"]["kind_weights"]  # as written by the code before the field
    torch.save(state, checkpoint / STATE_NAME)
    assert Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=4), resume=True).step == 2
    tilted = tiny_data(kind_weights={"spatial": 2.0})
    with pytest.raises(ValueError, match="data"):
        Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=4, data=tilted), resume=True)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    tokenizer = small_tokenizer()
    torch.manual_seed(0)
    model = VideoMolmoModel(tiny()).train()
    dataset = PointingDataset(tiny_data(), model.config, tokenizer)
    batch = collate([dataset[0], dataset[1]], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(parameter_groups(model, 3e-3, 3e-3), betas=(0.9, 0.95),
                                  eps=1e-6)
    before = answer_loss(model, batch) / batch.num_answer_tokens
    before.backward()
    assert all(p.grad is not None for p in model.vision_backbone.adapter.parameters())
    assert model.vision_backbone.image_vit.patch_embedding.weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        after = answer_loss(model, batch) / batch.num_answer_tokens
    assert float(after) < float(before.detach()) - 0.05


def test_reproducible_and_exactly_resumable(tmp_path, tokenizer_dir):
    full = Trainer(run_config(tmp_path / "full", tokenizer_dir))
    losses_full = full.train(progress=False)
    assert len(losses_full) == 4 and np.isfinite(losses_full).all()

    first = Trainer(run_config(tmp_path / "split", tokenizer_dir))
    assert first.train(steps=2, progress=False) == losses_full[:2]  # same seed, same losses
    checkpoint = latest_checkpoint(tmp_path / "split")
    assert checkpoint is not None and checkpoint.name == "step-000002"
    assert (checkpoint / STATE_NAME).is_file() and (checkpoint / "config.json").is_file()
    del first
    resumed = Trainer(run_config(tmp_path / "split", tokenizer_dir), resume=True)
    assert resumed.step == 2
    assert resumed.train(progress=False) == losses_full[2:]  # bit-exact continuation
    a = loading.read_tensors(str(tmp_path / "full"))
    b = loading.read_tensors(str(tmp_path / "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "split" / LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_a_resume_that_changes_the_schedule_is_recorded_and_reproduced(tmp_path,
                                                                     tokenizer_dir):
    """A run stopped at step 2 of an 8-step schedule and resumed as a 4-step one (``H22``
    was): its recipe says so, and ``train.reproduce`` re-runs it bit for bit, where the last
    command alone would run all four steps on the 4-step schedule."""
    from videomolmo_ros.train import reproduce

    Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=8)).train(steps=2, progress=False)
    resumed = Trainer(run_config(tmp_path / "run", tokenizer_dir, steps=4, save_every=1),
                      resume=True)
    resumed.train(progress=False)
    recipe = json.loads((tmp_path / "run" / "training.json").read_text())
    assert recipe["resumed"] == [{"step": 2, "changed": {"steps": [8, 4],
                                                         "save_every": [2, 1]}}]
    commands = reproduce.chain_commands(recipe)
    assert len(commands) == 2
    assert "--steps 8" in commands[0] and "--stop-after 2" in commands[0]
    assert "--steps 4" in commands[1] and commands[1].endswith("--resume")
    for command in commands:
        arguments = shlex.split(command)[3:]  # after "python -m videomolmo_ros.train"
        arguments[arguments.index("--out") + 1] = str(tmp_path / "again")
        assert main(arguments + ["--no-progress"]) == 0
    a = loading.read_tensors(str(tmp_path / "run"))
    b = loading.read_tensors(str(tmp_path / "again"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = json.loads((tmp_path / "again" / "training.json").read_text())
    assert again["resumed"] == recipe["resumed"]
    # The last command alone trains another model: the record is needed.
    assert main(shlex.split(commands[1])[3:-1] + ["--no-progress", "--out",
                                                  str(tmp_path / "last")]) == 0
    c = loading.read_tensors(str(tmp_path / "last"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_resume_that_changes_nothing_records_nothing(tmp_path, tokenizer_dir):
    Trainer(run_config(tmp_path, tokenizer_dir)).train(steps=2, progress=False)
    Trainer(run_config(tmp_path, tokenizer_dir), resume=True).train(progress=False)
    assert "resumed" not in json.loads((tmp_path / "training.json").read_text())


def test_resume_refuses_a_different_recipe(tmp_path, tokenizer_dir):
    Trainer(run_config(tmp_path, tokenizer_dir, steps=2)).train(progress=False)
    with pytest.raises(ValueError, match="changed"):
        Trainer(run_config(tmp_path, tokenizer_dir, steps=2, batch_frames=2), resume=True)


def test_cli_smoke_run_gives_a_loadable_model(tmp_path, tokenizer_dir):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--preset", "tiny", "--steps", "2", "--batch-frames", "1",
                 "--grad-accum", "1", "--queries-per-frame", "2", "--tokenizer", tokenizer_dir,
                 "--scene", json.dumps(TINY_SCENE), "--no-progress", "--save-every", "1"]) == 0
    recipe = json.loads((out / "training.json").read_text())
    assert recipe["step"] == 2 and recipe["config"]["preset"] == "tiny"
    pointer = VideoMolmoPointer.from_pretrained(str(out), max_new_tokens=5)
    assert pointer.model.vision_backbone.adapter is not None
    assert pointer.model.config.temporal.history_frames == 4
    from videomolmo_ros.data.synthetic import generate_scene

    scene = generate_scene(3, **TINY_SCENE)
    frame = scene.frame(5)
    points = pointer.point(frame, pointer.encode(frame), [], ["the red circle"])
    assert len(points) == 1 and len(pointer.last_texts) == 1


def test_single_frame_ablation(tmp_path, tokenizer_dir):
    trainer = Trainer(run_config(tmp_path, tokenizer_dir, steps=1, temporal=False))
    assert trainer.model.vision_backbone.adapter is None
    assert trainer.config.data.history_frames == 0
    assert trainer.batches(0)[0].history.shape[1] == 0
    trainer.train(progress=False)
    model = loading.load_videomolmo(str(tmp_path))
    assert model.vision_backbone.adapter is None


def test_preset_overrides_merge_sections():
    config = preset("small", crops={"max_crops": 6}, num_hidden_layers=2)
    assert config.crops.max_crops == 6 and config.crops.overlap_margins == (2, 2)
    assert config.num_hidden_layers == 2 and config.vision_backbone.image_emb_dim == 128
    with pytest.raises(ValueError):
        preset("small", not_a_field=1)


def test_init_from_a_trained_model_and_connector_init(tmp_path, tokenizer_dir):
    first = Trainer(run_config(tmp_path / "a", tokenizer_dir, steps=1))
    first.train(progress=False)
    second = Trainer(run_config(tmp_path / "b", tokenizer_dir, steps=1,
                                init_from=str(tmp_path / "a"),
                                data=tiny_data(kinds=("attribute",))))
    assert second.step == 0
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.model.config.temporal.history_frames == second.config.data.history_frames
    # a later stage may space the history out; the saved model then carries that spacing
    strided = Trainer(run_config(tmp_path / "s", tokenizer_dir, steps=1,
                                 init_from=str(tmp_path / "a"),
                                 data=tiny_data(history_stride=3)))
    strided.train(progress=False)
    reloaded = VideoMolmoPointer.from_pretrained(str(tmp_path / "s"), max_new_tokens=5)
    assert reloaded.history_stride == 3 and first.model.config.temporal.history_stride == 1
    # a later stage may see the frames larger: same weights, the ViT positions are resized
    larger = Trainer(run_config(tmp_path / "r", tokenizer_dir, steps=1,
                                init_from=str(tmp_path / "a"), model_overrides={
                                    "vision_backbone": {"image_default_input_size": [168, 168]}}))
    assert all(torch.equal(a[k], larger.model.state_dict()[k]) for k in a)
    assert larger.batches(0)[0].crops.shape[-2] == 12 * 12  # patches per crop, was 8 x 8
    larger.train(progress=False)
    reloaded = VideoMolmoPointer.from_pretrained(str(tmp_path / "r"), max_new_tokens=5)
    assert reloaded.model.config.vision_backbone.image_default_input_size == (168, 168)
    # an override that changes a weight's shape cannot start from the stage: a clear error
    with pytest.raises(loading.CheckpointMismatchError):
        Trainer(run_config(tmp_path / "w", tokenizer_dir, init_from=str(tmp_path / "a"),
                           model_overrides={"hidden_size": 48}))
    # the single-frame ablation may share an earlier stage: the temporal module is dropped
    single = Trainer(run_config(tmp_path / "c", tokenizer_dir, init_from=str(tmp_path / "a"),
                                temporal=False))
    assert single.model.vision_backbone.adapter is None
    assert not single.model.config.temporal.enabled
    single.train(progress=False)
    # the temporal twin of a single-frame stage: the module is added as the identity (f^ = f)
    twin = Trainer(run_config(tmp_path / "g", tokenizer_dir, init_from=str(tmp_path / "c")))
    adapter = twin.model.vision_backbone.adapter
    assert twin.model.config.temporal.enabled and adapter is not None
    assert not adapter.wo.weight.any() and adapter.wq.weight.any()
    batch = twin.batches(0)[0]
    assert batch.history.shape[1] == twin.config.data.history_frames > 0
    with torch.no_grad():
        features = twin.model.encode_frame(batch.crops)
        history = [twin.model.encode_frame(batch.history[:, i])
                   for i in range(batch.history.shape[1])]
        torch.testing.assert_close(twin.model.image_embeddings(features, history),
                                   single.model.image_embeddings(features))
    assert any(p is adapter.wo.weight for g in twin.optimizer.param_groups for p in g["params"])
    # the connector init makes image features reach the LLM at the scale of the embeddings
    scaled = Trainer(run_config(tmp_path / "d", tokenizer_dir)).model
    plain = Trainer(run_config(tmp_path / "e", tokenizer_dir, init_connector=False)).model
    batch = Trainer(run_config(tmp_path / "f", tokenizer_dir)).batches(0)[0]
    with torch.no_grad():
        norms = [m.image_embeddings(m.encode_frame(batch.crops)).norm(dim=-1).mean()
                 for m in (scaled, plain)]
    assert norms[0] > 30 * norms[1]


def test_vit_positions_start_as_a_two_dimensional_sin_cos_code(tmp_path, tokenizer_dir):
    table = Trainer(run_config(tmp_path, tokenizer_dir)).model.vision_backbone.image_vit \
        .positional_embedding.detach()
    side, quarter = int((table.shape[0] - 1) ** 0.5), table.shape[1] // 4
    patches = table[1:].reshape(side, side, -1)
    column_code, row_code = patches[..., : 2 * quarter], patches[..., 2 * quarter:]
    assert torch.equal(column_code[0], column_code[side - 1])  # the column code ignores the row
    assert torch.equal(row_code[:, 0], row_code[:, side - 1])  # and the row code the column
    assert torch.allclose(patches[0, 0, quarter: 2 * quarter], torch.ones(quarter))  # cos 0
    assert not torch.allclose(column_code[0, 0], column_code[0, 1])


def test_grounding_monitor_goes_into_the_log(tmp_path, tokenizer_dir):
    trainer = Trainer(run_config(tmp_path, tokenizer_dir, steps=2, monitor_every=2))
    trainer.train(progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "held_out_first_digit" not in records[0]
    scores = {k: v for k, v in records[1].items() if k.startswith("held_out_")}
    assert set(scores) == {"held_out_first_digit", "held_out_second_digit",
                           "held_out_none_recall"}
    assert all(0.0 <= v <= 1.0 for v in scores.values() if v == v)  # nan: none to score
    assert scores["held_out_first_digit"] == scores["held_out_first_digit"]  # points exist


def test_cli_stop_after_leaves_a_checkpoint_on_the_full_schedule(tmp_path, tokenizer_dir,
                                                                  capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--preset", "tiny", "--steps", "3", "--batch-frames", "1",
            "--grad-accum", "1", "--queries-per-frame", "1", "--tokenizer", tokenizer_dir,
            "--scene", json.dumps(TINY_SCENE), "--no-progress", "--save-every", "5"]
    assert main(args + ["--stop-after", "1"]) == 0
    checkpoint = out / "checkpoints" / "step-000001"
    assert str(checkpoint) in capsys.readouterr().out
    assert not (out / "training.json").exists()  # not a finished run
    recipe = json.loads((checkpoint / "training.json").read_text())
    assert recipe["step"] == 1 and recipe["config"]["steps"] == 3
    assert loading.load_videomolmo(str(checkpoint)).vision_backbone.adapter is not None
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--stop-after", "4"])
    assert exit_info.value.code == 2


def test_query_recall_loss_targets_the_distinct_query_tokens():
    from videomolmo_ros.train.trainer import query_recall_loss

    logits = torch.randn(4, 10)
    # a repeat, none, one, id 0 beside padding (padding must not erase it)
    tokens = torch.tensor([[4, 7, 4], [-1, -1, -1], [2, -1, -1], [0, -1, -1]])
    expected = -(torch.log_softmax(logits[0], -1)[[4, 7]].mean()
                 + torch.log_softmax(logits[2], -1)[2] + torch.log_softmax(logits[3], -1)[0])
    assert torch.allclose(query_recall_loss(logits, tokens), expected)
    assert float(query_recall_loss(logits, torch.full((4, 2), -1))) == 0.0


def test_batches_carry_each_segment_query_tokens():
    tokenizer = small_tokenizer()
    dataset = PointingDataset(tiny_data(), tiny(), tokenizer)
    samples = [dataset[0], dataset[1]]
    batch = collate(samples, tokenizer.pad_token_id)
    for b, sample in enumerate(samples):
        assert len(sample.query_tokens) == len(sample.queries) >= 1
        for j, query in enumerate(sample.queries, start=1):
            row = batch.query_tokens[b, j]
            assert row[row >= 0].tolist() == tokenizer.encode(" " + query,
                                                              add_special_tokens=False)
            assert bool((batch.segments[b] == j).any())
        assert bool((batch.query_tokens[b, 0] == -1).all())


def check_training_only_loss(tmp_path, tokenizer_dir, log_key: str, **extra) -> None:
    """An extra training-only loss (``extra``: its TrainConfig weight): the logged "loss" stays
    the answer loss, the updates change, the log carries ``log_key``, a run resumes bit-exactly
    and refuses to resume without it, and the export has no extra tensors."""
    full = Trainer(run_config(tmp_path / "full", tokenizer_dir, **extra))
    losses_full = full.train(progress=False)
    plain = Trainer(run_config(tmp_path / "plain", tokenizer_dir))
    assert plain.train(progress=False)[0] == losses_full[0]  # "loss" is the answer loss alone
    assert losses_full[1:] != plain.losses[1:]  # the extra loss changed the updates
    records = [json.loads(line)
               for line in (tmp_path / "full" / LOG_NAME).read_text().splitlines()]
    assert all(r[log_key] > 0 for r in records)
    first = Trainer(run_config(tmp_path / "split", tokenizer_dir, **extra))
    first.train(steps=2, progress=False)
    del first
    resumed = Trainer(run_config(tmp_path / "split", tokenizer_dir, **extra), resume=True)
    assert resumed.train(progress=False) == losses_full[2:]
    with pytest.raises(ValueError, match="changed"):
        Trainer(run_config(tmp_path / "split", tokenizer_dir), resume=True)
    exported = loading.read_tensors(str(tmp_path / "full"))
    assert exported.keys() == loading.read_tensors(str(tmp_path / "plain")).keys()


def test_query_recall_run_resumes_exactly_and_exports_no_extra_weights(tmp_path, tokenizer_dir):
    check_training_only_loss(tmp_path, tokenizer_dir, "query_recall_loss", query_recall=0.5)


def test_keep_readouts_run_resumes_exactly_and_exports_no_extra_weights(tmp_path, tokenizer_dir):
    run = Trainer(run_config(tmp_path / "targets", tokenizer_dir, keep_readouts=0.5))
    batch = run.batches(0)[0]
    targets = batch.token_targets
    tokens = batch.image_input_idx.shape[1:]  # (T, K): one target per image token
    assert targets.owned.shape == (1,) + tuple(tokens)
    assert bool(targets.owned.any())  # the tiny scene's objects own some tokens
    assert Trainer(run_config(tmp_path / "none", tokenizer_dir)).batches(0)[0] \
        .token_targets is None
    check_training_only_loss(tmp_path, tokenizer_dir, "readout_loss", keep_readouts=0.5)


def test_head_warmup_trains_the_fresh_heads_alone_before_step_one(tmp_path, tokenizer_dir):
    """--head-warmup: the heads learn (their losses fall) while the model, its optimizer and
    its schedule stay as they were; the run's first loss is then that of the run without it;
    a resumed run does not warm up again and ends where the uninterrupted one does."""
    for bad in (dict(head_warmup=2), dict(head_warmup=-1, query_recall=0.5)):
        with pytest.raises(ValueError, match="head_warmup"):
            run_config(tmp_path / "bad", tokenizer_dir, **bad)
    heads = dict(query_recall=0.5, keep_readouts=0.5)
    run = Trainer(run_config(tmp_path / "warm", tokenizer_dir, head_warmup=6, **heads))
    model_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    recall_before = run.recall_head.weight.detach().clone()
    records = run.warm_up_heads()
    assert [r["head_warmup_step"] for r in records] == list(range(1, 7))
    assert records[-1]["query_recall_loss"] < records[0]["query_recall_loss"]
    assert records[-1]["readout_loss"] < records[0]["readout_loss"]
    assert all(torch.equal(model_before[k], v) for k, v in run.model.state_dict().items())
    assert not torch.equal(run.recall_head.weight, recall_before)
    assert all(p.requires_grad for p in run.model.parameters())
    assert not run.optimizer.state and run.scheduler.last_epoch == 0
    logged = (tmp_path / "warm" / HEAD_WARMUP_LOG).read_text().splitlines()
    assert [json.loads(line) for line in logged] == records

    full = Trainer(run_config(tmp_path / "full", tokenizer_dir, head_warmup=6, **heads))
    losses = full.train(progress=False)
    cold = Trainer(run_config(tmp_path / "cold", tokenizer_dir, **heads))
    assert cold.train(progress=False)[0] == losses[0]  # the model was not touched
    assert cold.losses[1:] != losses[1:]  # warm heads steer the updates differently
    split = Trainer(run_config(tmp_path / "split", tokenizer_dir, head_warmup=6, **heads))
    split.train(steps=2, progress=False)
    del split
    (tmp_path / "split" / HEAD_WARMUP_LOG).unlink()
    resumed = Trainer(run_config(tmp_path / "split", tokenizer_dir, head_warmup=6, **heads),
                      resume=True)
    assert resumed.train(progress=False) == losses[2:]
    assert not (tmp_path / "split" / HEAD_WARMUP_LOG).exists()  # no second warm-up
    with pytest.raises(ValueError, match="head_warmup"):
        Trainer(run_config(tmp_path / "split", tokenizer_dir, head_warmup=3, **heads),
                resume=True)


def test_motion_readout_reads_the_owner_motion_and_needs_the_temporal_module(tmp_path,
                                                                            tokenizer_dir):
    for bad in (dict(motion_readout=1.0), dict(motion_readout=1.0, keep_readouts=0.5,
                                               temporal=False),
                dict(motion_readout=-1.0, keep_readouts=0.5)):
        with pytest.raises(ValueError, match="motion_readout"):
            run_config(tmp_path / "bad", tokenizer_dir, **bad)
    run = Trainer(run_config(tmp_path / "heads", tokenizer_dir, keep_readouts=0.5,
                             motion_readout=1.0))
    assert "motion" in run.readout_heads.classifiers
    targets = run.batches(0)[0].token_targets
    assert targets.classes["motion"].shape == targets.owned.shape
    assert bool((targets.classes["motion"][~targets.owned] == 0).all())
    assert bool((targets.classes["motion"][targets.owned] > 0).all())
    assert "motion" not in Trainer(run_config(tmp_path / "plain", tokenizer_dir,
                                              keep_readouts=0.5)).readout_heads.classifiers
    check_training_only_loss(tmp_path, tokenizer_dir, "readout_motion_loss", keep_readouts=0.5,
                             motion_readout=1.0)


@pytest.mark.parametrize("at, embedding", [("embedding", "linear+conv"),
                                           ("features", "linear+conv-features")])
def test_add_conv_stem_starts_where_the_linear_model_was_and_learns(tmp_path, tokenizer_dir,
                                                                    at, embedding):
    """--add-conv-stem (at the embedding or at the features) on a trained linear model: same
    weights, same image features at step 0 (the branch's output layer is zero), the branch
    trained at its own rate, saved and loaded back with its embedding; a later stage keeps
    the trained branch."""
    first = Trainer(run_config(tmp_path / "a", tokenizer_dir, steps=1))
    first.train(progress=False)
    stem_run = Trainer(run_config(tmp_path / "b", tokenizer_dir, steps=2,
                                  init_from=str(tmp_path / "a"), add_conv_stem=True,
                                  conv_stem_at=at, lr_stem=1e-2, keep_readouts=0.5,
                                  readout_weights={"shape": 5.0}))
    vit = stem_run.model.vision_backbone.image_vit
    assert stem_run.model.config.vision_backbone.image_patch_embedding == embedding
    assert not vit.conv_stem.linear.weight.any() and not vit.conv_stem.linear.bias.any()
    a, b = first.model.state_dict(), stem_run.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k for k in b if k not in a} == {k for k in b if ".conv_stem." in k} != set()
    assert stem_run.readout_heads.attribute_weights["shape"] == 5.0
    rates = {g["name"]: g["initial_lr"] for g in stem_run.optimizer.param_groups}
    assert rates["vision_stem"] == 1e-2 and rates["vision"] == 3e-3
    crops = stem_run.batches(0)[0].crops
    with torch.no_grad():
        torch.testing.assert_close(stem_run.model.encode_frame(crops),
                                   first.model.eval().encode_frame(crops))
    conv_before = vit.conv_stem.stem[0].weight.detach().clone()
    stem_run.train(progress=False)
    assert vit.conv_stem.linear.weight.any()  # the branch now adds something
    assert not torch.equal(vit.conv_stem.stem[0].weight, conv_before)
    reloaded = VideoMolmoPointer.from_pretrained(str(tmp_path / "b"), max_new_tokens=5)
    assert reloaded.model.config.vision_backbone.image_patch_embedding == embedding
    trained = stem_run.model.eval().state_dict()
    assert all(torch.equal(trained[k], v) for k, v in reloaded.model.state_dict().items())
    # a later stage from it, asking again, keeps the trained branch
    later = Trainer(run_config(tmp_path / "c", tokenizer_dir, steps=1,
                               init_from=str(tmp_path / "b"), add_conv_stem=True,
                               conv_stem_at=at))
    assert all(torch.equal(trained[k], v) for k, v in later.model.state_dict().items())


def test_grow_llm_starts_where_the_trained_model_was_and_keeps_its_depth(tmp_path,
                                                                         tokenizer_dir):
    """--grow-llm with --init-from: a deeper LLM whose first loss is the plain stage's (it
    computes what the trained model did), saved and reloaded at its new depth, fixed across a
    resume; without --init-from it is refused."""
    for bad in (dict(grow_llm=1), dict(grow_llm=-1, init_from="x")):
        with pytest.raises(ValueError, match="grow_llm"):
            run_config(tmp_path / "bad", tokenizer_dir, **bad)
    Trainer(run_config(tmp_path / "a", tokenizer_dir, steps=1)).train(progress=False)
    layers = tiny().num_hidden_layers
    plain = Trainer(run_config(tmp_path / "plain", tokenizer_dir, init_from=str(tmp_path / "a")))
    grown = Trainer(run_config(tmp_path / "grown", tokenizer_dir, init_from=str(tmp_path / "a"),
                               grow_llm=1))
    assert len(grown.model.llm.layers) == grown.model.config.num_hidden_layers == layers + 1
    trained_llm = {n for n, _ in grown.model.named_parameters() if n.startswith("llm.layers.")}
    in_groups = {id(p) for g in grown.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_groups for p in grown.model.parameters())  # the new blocks train
    assert len(trained_llm) > len([n for n, _ in plain.model.named_parameters()
                                   if n.startswith("llm.layers.")])
    losses = grown.train(steps=2, progress=False)
    assert losses[0] == pytest.approx(plain.train(steps=1, progress=False)[0], rel=1e-5)
    with pytest.raises(ValueError, match="grow_llm"):
        Trainer(run_config(tmp_path / "grown", tokenizer_dir, init_from=str(tmp_path / "a"),
                           grow_llm=2), resume=True)
    resumed = Trainer(run_config(tmp_path / "grown", tokenizer_dir,
                                 init_from=str(tmp_path / "a"), grow_llm=1), resume=True)
    assert resumed.model.config.num_hidden_layers == layers + 1  # not grown a second time
    resumed.train(progress=False)
    reloaded = VideoMolmoPointer.from_pretrained(str(tmp_path / "grown"), max_new_tokens=5)
    assert reloaded.model.config.num_hidden_layers == layers + 1
    assert main(["--out", str(tmp_path / "cli"), "--preset", "tiny", "--tokenizer",
                 tokenizer_dir, "--init-from", str(tmp_path / "a"), "--grow-llm",
                 str(layers + 1), "--no-progress", "--steps", "1"]) == 2


def test_conv_stem_and_readout_weight_settings_are_checked(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="keep_readouts"):
        run_config(tmp_path / "x", tokenizer_dir, readout_weights={"shape": 5.0})
    with pytest.raises(ValueError, match="lr_stem"):
        run_config(tmp_path / "x", tokenizer_dir, lr_stem=0.0)
    with pytest.raises(ValueError, match="init_vision_from and add_conv_stem"):
        run_config(tmp_path / "x", tokenizer_dir, stem_output_scale=0.0, add_conv_stem=True)
    with pytest.raises(ValueError, match="stem_output_scale must be >= 0"):
        run_config(tmp_path / "x", tokenizer_dir, stem_output_scale=-1.0,
                   init_vision_from="s", add_conv_stem=True)
    with pytest.raises(ValueError, match=">= 0"):
        run_config(tmp_path / "x", tokenizer_dir, keep_readouts=0.5,
                   readout_weights={"shape": -1.0})
    with pytest.raises(ValueError, match="no attribute"):
        Trainer(run_config(tmp_path / "x", tokenizer_dir, keep_readouts=0.5,
                           readout_weights={"smell": 1.0}))
    vision = dataclasses.asdict(tiny().vision_backbone) | {"image_patch_embedding": "conv"}
    conv = VideoMolmoModel(tiny(vision_backbone=vision))
    with pytest.raises(ValueError, match="linear patch embedding"):
        add_conv_stem(conv.vision_backbone.image_vit)
    # from scratch, the flag builds the branch in (a normal run, no zero start needed)
    scratch = Trainer(run_config(tmp_path / "s", tokenizer_dir, add_conv_stem=True))
    assert scratch.model.vision_backbone.image_vit.conv_stem is not None
    base = ["--out", str(tmp_path / "cli"), "--preset", "tiny", "--tokenizer", tokenizer_dir,
            "--keep-readouts", "0.5", "--no-progress"]
    for bad in ('{"shape": }', '[5]'):
        with pytest.raises(SystemExit) as exit_info:
            main(base + ["--readout-weights", bad])
        assert exit_info.value.code == 2


@pytest.mark.parametrize("weights, reason", [
    ('{"spatial": }', "not JSON"), ('[2]', "JSON object"), ('{"spatial": "two"}', "numbers > 0"),
    ('{"smell": 2}', "not trained on"), ('{"spatial": 0}', "numbers > 0")])
def test_the_cli_refuses_bad_kind_weights_with_a_reason(tmp_path, tokenizer_dir, capsys,
                                                        weights, reason):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "cli"), "--preset", "tiny", "--tokenizer", tokenizer_dir,
              "--kind-weights", weights, "--no-progress"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "error:" in error and reason in error, error


def test_referent_map_loss_is_the_cross_entropy_against_the_covered_tokens():
    from videomolmo_ros.train.trainer import referent_map_loss

    # Attention probabilities on the image tokens (a row need not sum to 1: the rest is on text).
    attention = torch.tensor([[0.2, 0.1, 0.3, 0.4], [0.0, 0.5, 0.25, 0.25], [0.25] * 4])
    coverage = torch.tensor([[0.5, 0.5, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0] * 4])
    valid = torch.tensor([[True, True, True, False], [True] * 4, [True] * 4])
    expected = (-(0.5 * np.log(0.2) + 0.5 * np.log(0.1)) - np.log(0.5)) / 2  # row 2: no referent
    assert float(referent_map_loss(attention, coverage, valid)) == pytest.approx(expected)
    perfect = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert float(referent_map_loss(perfect, coverage[:1], valid[:1])) < \
        float(referent_map_loss(attention[:1], coverage[:1], valid[:1]))
    assert float(referent_map_loss(attention, torch.zeros(3, 4), valid)) == 0.0


@torch.no_grad()
def test_packed_forward_returns_the_attention_of_the_same_forward_pass(tmp_path, tokenizer_dir):
    from videomolmo_ros.train.trainer import packed_forward

    run = Trainer(run_config(tmp_path, tokenizer_dir))
    batch = run.batches(0)[0]
    model = run.model.eval()
    plain, image, none = packed_forward(model, batch)
    hidden, image_again, attention = packed_forward(model, batch, attention_of_layer=-1)
    assert none is None and torch.equal(image, image_again)
    assert torch.allclose(hidden, plain, atol=1e-5)  # eager and sdpa: the same model
    length = batch.input_ids.shape[1]
    assert attention.shape == (1, model.config.num_attention_heads, length, length)
    assert torch.allclose(attention.sum(-1), torch.ones(()), atol=1e-5)
    allowed = batch.attention_mask[:, 0]
    assert float(attention.transpose(0, 1)[:, ~allowed].abs().max()) == 0.0  # mask respected
    assert model.llm.config._attn_implementation == "sdpa"  # restored


def test_referent_maps_cover_the_referents_image_tokens():
    from videomolmo_ros.train.vision_pretrain import pool_to_tokens, view_coverage

    tokenizer = small_tokenizer()
    config = tiny()
    dataset = PointingDataset(tiny_data(captions=1), config, tokenizer, referent_maps=True)
    covered = 0
    for index in range(6):
        sample = dataset[index]
        scene = dataset.scene_for(index)
        layout = dataset.preprocessor.frame(scene.frames[sample.frame_index]).layout
        per_object = pool_to_tokens(view_coverage(scene.masks[sample.frame_index], layout,
                                                  config), config)  # (T, K, N)
        assert sample.referent_maps.shape == (len(sample.queries),) + per_object.shape[:2]
        assert sample.referent_maps.shape[1:] == sample.image_input_idx.shape
        for row, query, answer in zip(sample.referent_maps, sample.queries, sample.answers):
            if query == CAPTION_PROMPT:
                continue
            expression = next(e for e in scene.expressions if e.text == query)
            referents = per_object[..., list(expression.object_ids)].sum(-1)  # (T, K)
            if "There are none" in answer:
                assert float(row.sum()) == 0.0  # no visible referent: nothing to single out
                continue
            covered += 1
            assert referents.flatten()[int(row.flatten().argmax())] > 0
            # Where no referent is, the map is zero, whatever other objects cover there.
            assert float(row[torch.from_numpy(referents == 0)].abs().sum()) == 0.0
        assert float(sample.referent_maps[-1].sum()) == 0.0  # the caption has no referent
    assert covered >= 3
    batch = collate([dataset[0], dataset[1]], tokenizer.pad_token_id)
    assert batch.referent_maps.shape[:2] == batch.query_tokens.shape[:2]
    assert float(batch.referent_maps[:, 0].abs().sum()) == 0.0  # the image prefix row
    assert PointingDataset(tiny_data(), config, tokenizer)[0].referent_maps is None


def test_referent_map_run_resumes_exactly_and_exports_no_extra_weights(tmp_path, tokenizer_dir):
    check_training_only_loss(tmp_path, tokenizer_dir, "referent_map_loss", referent_map=0.5)


def test_referent_layer_picks_the_supervised_layer_and_a_wrong_one_is_a_clear_error(
        tmp_path, tokenizer_dir, capsys):
    from videomolmo_ros.train.trainer import step_losses

    run = Trainer(run_config(tmp_path / "first", tokenizer_dir, referent_map=1.0,
                             referent_layer=0))
    batch = run.batches(0)[0]
    first = step_losses(run.model, batch, referent_layer=0)["referent"]
    last = step_losses(run.model, batch, referent_layer=-1)["referent"]
    assert float(first) != float(last)
    layers = run.model.config.num_hidden_layers
    assert main(["--out", str(tmp_path / "bad"), "--preset", "tiny", "--steps", "1",
                 "--tokenizer", tokenizer_dir, "--referent-map", "1",
                 "--referent-layer", str(layers), "--no-progress"]) == 2
    assert f"not a layer of the {layers}-layer LLM" in capsys.readouterr().err
