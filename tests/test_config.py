"""Config files: a mistake names the file, the key and what was expected."""

import pytest

from loopserve import ConfigError, Model, ModelConfig, load_config


def write(tmp_path, text, name="config.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_batch_sise: 4\n", r"config.yaml: Object contains unknown field `max_batch_sise`"),
        ("max_batch_size: four\n", r"config.yaml: Expected `int`, got `str` - at `\$.max_batch_size`"),
        ("max_batch_size: -1\n", r"Expected `int` >= 0 - at `\$.max_batch_size`"),
        ("device: gpu\n", r"Expected `str` matching regex .* - at `\$.device`"),
        ("instances: 150\n", r"Expected `int` <= 64 - at `\$.instances`"),
        ("inputs: [{name: x, datatype: FLOAT, dims: [4]}]\n", r"Invalid enum value 'FLOAT' - at `\$.inputs\[0\].datatype`"),
        ("dynamic_batching: {max_queue_delay: 100}\n", r"unknown field `max_queue_delay` - at `\$.dynamic_batching`"),
        ("max_batch_size: [\n", r"config.yaml: .*"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_toml_and_json_configs(tmp_path):
    assert load_config(write(tmp_path, 'max_batch_size = 8\ndevice = "cuda:1"\n', "c.toml")).device == "cuda:1"
    assert load_config(write(tmp_path, '{"max_batch_size": 8}', "c.json")).max_batch_size == 8
    with pytest.raises(ConfigError, match=r"unknown config format '.ini'"):
        load_config(write(tmp_path, "", "c.ini"))


def test_batching_values_checked_against_each_other(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text("def infer(inputs):\n    return inputs\n")
    write(tmp_path / "m", "max_batch_size: 8\ndynamic_batching: {preferred_batch_sizes: [16]}\n"
                          "inputs: [{name: x, datatype: FP32, dims: [1]}]\noutputs: [{name: x, datatype: FP32, dims: [1]}]\n")
    with pytest.raises(ConfigError, match=r"model 'm': preferred_batch_sizes entry 16 must be in \[1, max_batch_size=8\]"):
        Model.load(tmp_path / "m")


def test_model_directory_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"no config file; expected one of config.yaml"):
        Model.load(tmp_path)
    write(tmp_path, "max_batch_size: 2\n")
    with pytest.raises(Exception, match=r"no version directories"):
        Model.load(tmp_path)
    (tmp_path / "1").mkdir()
    with pytest.raises(ConfigError, match=r"no model file; expected one of model.onnx, model.pt2, model.pt, model.py"):
        Model.load(tmp_path)


def test_python_backend_needs_declared_tensors(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("def infer(inputs):\n    return inputs\n")
    write(tmp_path, "max_batch_size: 2\n")
    with pytest.raises(ConfigError, match=r"declare `inputs` and `outputs`"):
        Model.load(tmp_path)


def test_defaults_are_sensible():
    c = ModelConfig()
    assert c.max_batch_size == 0 and c.instances == 1 and c.device == "cpu"
    assert c.dynamic_batching.queue_capacity == 1024 and c.dynamic_batching.adaptive_queue_delay


def test_the_shipped_demo_server_config_decodes():
    from pathlib import Path

    from loopserve.server.config import load_server_config

    root = Path(__file__).resolve().parents[1]
    config = load_server_config(root / "configs" / "demo.yaml")
    assert Path(config.model_repository).resolve() == (root / "demo-run" / "models").resolve()
    assert config.models == ["mlp"] and config.http.port == 8000
