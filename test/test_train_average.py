"""Averaging fine-tuned runs (a model soup): the mean of the weights, refusals of models that
cannot be averaged, and a recipe that ``train.ship`` and ``train.reproduce`` follow through it."""
from __future__ import annotations

import json
import shlex
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model import loading  # noqa: E402
from videomolmo_ros.train import average as soup  # noqa: E402
from videomolmo_ros.train.reproduce import chain_commands  # noqa: E402
from videomolmo_ros.train.ship import ship  # noqa: E402
from videomolmo_ros.train.testing import small_tokenizer, tiny_data  # noqa: E402
from videomolmo_ros.train.trainer import TrainConfig, Trainer  # noqa: E402

torch.set_num_threads(1)


def test_average_state_dicts_is_the_element_wise_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    b = {"w": torch.tensor([3.0, -2.0]), "b": torch.tensor([1.5])}
    c = {"w": torch.tensor([2.0, 3.0]), "b": torch.tensor([1.0])}
    mean = soup.average_state_dicts([a, b, c])
    torch.testing.assert_close(mean["w"], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(mean["b"], torch.tensor([1.0]))
    assert mean["w"].dtype == torch.float32


@pytest.mark.parametrize("other, reason", [
    ({"w": torch.zeros(3)}, "shape"),
    ({"w": torch.zeros(2), "extra": torch.zeros(1)}, "other tensors"),
])
def test_average_state_dicts_refuses_models_that_do_not_match(other, reason):
    with pytest.raises(soup.AverageError, match=reason):
        soup.average_state_dicts([{"w": torch.zeros(2)}, other])
    with pytest.raises(soup.AverageError, match="at least two"):
        soup.average_state_dicts([{"w": torch.zeros(2)}])


@pytest.fixture(scope="module")
def branches(tmp_path_factory):
    """out/base, then two one-step runs from it on different data (out/a, out/b)."""
    root = tmp_path_factory.mktemp("soup") / "out"
    tokenizer_dir = root.parent / "tokenizer"
    small_tokenizer().save_pretrained(str(tokenizer_dir))
    common = dict(preset="tiny", steps=1, batch_frames=1, grad_accum=1, save_every=1,
                  warmup_steps=0)
    Trainer(TrainConfig(output_dir=str(root / "base"), tokenizer=str(tokenizer_dir),
                        data=tiny_data(), **common)).train(progress=False)
    for name, seed in (("a", 1), ("b", 2)):
        Trainer(TrainConfig(output_dir=str(root / name), init_from=str(root / "base"),
                            data=tiny_data(seed=seed), **common)).train(progress=False)
    return root, common


def test_averaged_runs_load_as_the_mean_and_record_their_recipes(branches):
    root, _ = branches
    out = soup.average([root / "a", root / "b"], root / "ab")
    a, b, mean = (loading.load_videomolmo(str(root / n)).state_dict() for n in ("a", "b", "ab"))
    assert any(not torch.equal(a[name], b[name]) for name in a)  # the branches did part
    for name in a:
        torch.testing.assert_close(mean[name], (a[name] + b[name]) / 2, msg=name)
    recipe = json.loads((out / "training.json").read_text())
    assert str(root) not in json.dumps(recipe)
    assert soup.is_average(recipe) and recipe["output_dir"] == "out/ab"
    assert [s["config"]["output_dir"] for s in recipe["sources"]] == ["out/a", "out/b"]
    assert (out / "tokenizer.json").is_file()


def test_a_run_from_an_average_ships_and_reproduces_the_whole_tree(branches):
    root, common = branches
    soup.average([root / "a", root / "b"], root / "ab")
    Trainer(TrainConfig(output_dir=str(root / "c"), init_from=str(root / "ab"),
                        data=tiny_data(seed=3), **common)).train(progress=False)
    shipped = ship(root / "c", root.parent / "shipped")
    recipe = json.loads((shipped / "training.json").read_text())
    assert [s["stage"] for s in recipe["stages"]] == ["average"]
    commands = chain_commands(recipe)
    outs = [shlex.split(c)[shlex.split(c).index("--out") + 1] for c in commands]
    assert outs == ["out/base", "out/a", "out/b", "out/ab", "out/c"]  # the shared base once
    assert commands[3] == "python -m videomolmo_ros.train.average --out out/ab out/a out/b"
    assert " --init-from out/ab " in commands[4] + " "
    assert " --init-from out/base " in commands[1] + " " and "--data-seed 1" in commands[1]

    # the average itself ships too, and its commands end with the averaging
    shipped_soup = ship(root / "ab", root.parent / "shipped_soup")
    assert chain_commands(json.loads((shipped_soup / "training.json").read_text()))[-1] == \
        commands[3]


def test_the_command_line_averages_and_refuses_what_it_cannot(branches, tmp_path, capsys):
    root, common = branches
    assert soup.main(["--out", str(tmp_path / "ab"), str(root / "a"), str(root / "b")]) == 0
    assert "averaged 2 models" in capsys.readouterr().out
    other = tmp_path / "no_temporal"
    Trainer(TrainConfig(output_dir=str(other), init_from=str(root / "base"), temporal=False,
                        data=tiny_data(), **common)).train(progress=False)
    for sources, reason in (([root / "a"], "at least two"),
                            ([root / "a", tmp_path / "missing"], "not a trained model"),
                            ([root / "a", other], "another model config"),
                            ([root / "a", tmp_path / "ab"], "is one of the sources")):
        out = tmp_path / "ab" if reason == "is one of the sources" else tmp_path / "refused"
        with pytest.raises(SystemExit) as exit_info:
            soup.main(["--out", str(out)] + [str(s) for s in sources])
        assert exit_info.value.code == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_a_model_with_another_tokenizer_is_refused(branches, tmp_path):
    from videomolmo_ros.train.tokenizer import build_tokenizer, training_corpus

    root, _ = branches
    other = tmp_path / "b_other_tokenizer"
    shutil.copytree(root / "b", other)
    tokenizer = build_tokenizer(training_corpus(num_scenes=1))  # same size, other merges
    assert tokenizer.get_vocab() != small_tokenizer().get_vocab()
    tokenizer.save_pretrained(str(other))
    with pytest.raises(soup.AverageError, match="another tokenizer"):
        soup.average([root / "a", other], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("text", ["{", "[]", "{}", '{"config": 3}'])
def test_a_source_with_an_unreadable_recipe_is_refused_with_its_name(branches, tmp_path, text,
                                                                       capsys):
    root, _ = branches
    broken = tmp_path / "b_broken_recipe"
    shutil.copytree(root / "b", broken)
    (broken / "training.json").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        soup.main(["--out", str(tmp_path / "refused"), str(root / "a"), str(broken)])
    assert exit_info.value.code == 2
    assert "b_broken_recipe/training.json is not a readable recipe" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
