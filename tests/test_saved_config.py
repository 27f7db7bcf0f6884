"""`--mode=eval/translate/score` read the run's own config from the workdir (train.saved_config)."""

import json

import pytest

from train import saved_config
from train.configs import rnn_bahdanau, transformer
from train.errors import UserError


@pytest.fixture
def workdir(tmp_path):
    config = transformer.get_config()
    config.model.emb_dim = 64
    saved_config.save_config(config, str(tmp_path))
    return str(tmp_path)


def test_saved_config_is_used_and_decode_fields_may_change(workdir):
    config = saved_config.trained_run_config(workdir, {"decode.beam_size": 7, "decode.strategy": "beam",
                                                     "data.eval_max_examples": 3})
    assert config.model.emb_dim == 64  # the run's, not the default file's 128
    assert (config.decode.beam_size, config.decode.strategy, config.data.eval_max_examples) == (7, "beam", 3)


def test_unchanged_model_field_is_accepted(workdir):
    assert saved_config.trained_run_config(workdir, {"model.emb_dim": 64}).model.emb_dim == 64


@pytest.mark.parametrize("path, value", [("model.emb_dim", 128), ("data.vocab_size", 512), ("learning_rate", 1.0)])
def test_field_that_changes_the_model_is_a_one_line_error(workdir, path, value):
    with pytest.raises(UserError, match=rf"--config\.{path}: got {value}.*trained with"):
        saved_config.trained_run_config(workdir, {path: value})


def test_config_file_of_another_model_is_refused(workdir):
    with pytest.raises(UserError, match="--config: describes a different model.*model.family"):
        saved_config.trained_run_config(workdir, {}, rnn_bahdanau.get_config())
    file_config = transformer.get_config()
    file_config.model.emb_dim = 64
    file_config.decode.beam_size = 9
    assert saved_config.trained_run_config(workdir, {}, file_config).decode.beam_size == 9


def test_missing_or_damaged_config_names_the_file(tmp_path, workdir):
    with pytest.raises(UserError, match="no config.json"):
        saved_config.trained_run_config(str(tmp_path / "empty"), {})
    path = f"{workdir}/config.json"
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="config.json: unreadable run config"):
        saved_config.trained_run_config(workdir, {})


def test_fields_added_since_the_run_come_from_the_defaults(workdir):
    path = f"{workdir}/config.json"
    with open(path) as f:
        stored = json.load(f)
    del stored["decode"]["alpha"], stored["num_heatmaps"]
    with open(path, "w") as f:
        json.dump(stored, f)
    config = saved_config.trained_run_config(workdir, {})
    assert config.decode.alpha == 0.6 and config.num_heatmaps == 3
