"""Hub publishing up to the network boundary: model cards, the snapshot layout, and upload errors.

Uploads run against huggingface_hub's real `HfApi` pointed at localhost: a closed port (no network) and a small local
server that records what the client sends and refuses it, so the requests are the real ones.
"""

import http.server
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from var_hf import evaluation, hub
from var_hf.commands.push import main as push_main

REPO_ID = "user/tiny-var"


@pytest.fixture(scope="module")
def pipeline_cls():
    pipelines = pytest.importorskip("var_hf.pipelines")
    if not hasattr(pipelines, "VARPipeline"):
        pytest.skip("var_hf.pipelines.VARPipeline is not available")
    return pipelines


@pytest.fixture(scope="module")
def metrics_json(tiny_pipeline, tmp_path_factory):
    """A real metrics.json from the runner (random domain classifier, random reference images)."""
    out = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    extractor = evaluation.DomainClassifier(evaluation.DomainClassifierConfig(num_classes=4, hidden_channels=(8, 16)))
    rng = np.random.default_rng(0)
    reference = evaluation.Reference(
        info={"source": "zalando-datasets/fashion_mnist", "kind": "hub-dataset", "split": "test"},
        images=rng.integers(0, 256, size=(24, 8, 8, 3), dtype=np.uint8),
    )
    result = evaluation.evaluate_pipeline(
        tiny_pipeline, str(out), reference=reference, feature_extractor=extractor.eval(), num_per_class=4,
        batch_size=8, progress=False,
    )
    return result.metrics_path


@pytest.fixture(scope="module")
def card_folder(tiny_pipeline, metrics_json, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("hub") / "tiny-var")
    tiny_pipeline.save_pretrained(folder)
    hub.write_model_card(
        folder, repo_id=REPO_ID, base_model="FoundationVision/var", datasets=["zalando-datasets/fashion_mnist"],
        metrics=metrics_json,
    )
    return folder


def _front_matter(readme: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", readme, flags=re.S)
    assert match, "README.md has no YAML front matter"
    return yaml.safe_load(match.group(1))


# ----------------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------------


def test_model_card_metadata_round_trips(card_folder, metrics_json):
    data = ModelCard.load(os.path.join(card_folder, "README.md")).data
    assert data.license == "mit" and data.library_name == "var_hf"
    assert {"diffusers", "image-generation", "var", "class-conditional"} <= set(data.tags)
    assert data.base_model == "FoundationVision/var"
    assert data.datasets == ["zalando-datasets/fashion_mnist"]
    assert data.model_name == "tiny-var"

    report = json.loads(open(metrics_json).read())
    by_type = {r.metric_type: r for r in data.eval_results}
    assert set(by_type) == {"fid", "inception_score", "precision", "recall", "accuracy"}
    assert by_type["fid"].metric_value == pytest.approx(report["metrics"]["fid"], abs=1e-4)
    assert by_type["accuracy"].metric_value == pytest.approx(report["metrics"]["class_accuracy"], abs=1e-4)
    fid = by_type["fid"]
    assert fid.dataset_type == "zalando-datasets/fashion_mnist" and fid.dataset_split == "test"
    assert fid.metric_args == {
        "num_samples": 16, "num_per_class": 4, "guidance_scale": 1.5, "top_k": 900, "top_p": 0.96, "temperature": 1.0,
        "seed": 0,
    }
    assert fid.metric_config == "domain-classifier"


def test_model_card_yaml_has_model_index_entries(card_folder):
    meta = _front_matter(open(os.path.join(card_folder, "README.md"), encoding="utf-8").read())
    (entry,) = meta["model-index"]
    assert entry["name"] == "tiny-var"
    metrics = [m for result in entry["results"] for m in result["metrics"]]
    assert {m["type"] for m in metrics} == {"fid", "inception_score", "precision", "recall", "accuracy"}
    assert all(isinstance(m["value"], float) for m in metrics)
    assert entry["results"][0]["task"]["type"] == "image-generation"


def test_model_card_shows_the_sample_grid_and_metrics(card_folder):
    readme = open(os.path.join(card_folder, "README.md"), encoding="utf-8").read()
    assert f"]({hub.SAMPLE_GRID_FILENAME})" in readme
    grid = PIL.Image.open(os.path.join(card_folder, hub.SAMPLE_GRID_FILENAME))
    assert grid.size == (4 * 128, 128)  # four 8-px classes, upscaled to 128-px tiles, one row
    assert "## Evaluation" in readme and "| FID |" in readme
    assert "FoundationVision/var" in readme


def test_usage_snippet_runs(card_folder, pipeline_cls, monkeypatch, tmp_path):
    readme = open(os.path.join(card_folder, "README.md"), encoding="utf-8").read()
    (snippet,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert f'VARPipeline.from_pretrained("{REPO_ID}")' in snippet
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(snippet.replace(REPO_ID, card_folder), namespace)  # the repo id resolved to the local snapshot
    assert isinstance(namespace["image"], PIL.Image.Image) and namespace["image"].size == (8, 8)
    assert (tmp_path / "sample.png").is_file()


def test_pipeline_loads_back_from_a_carded_folder(card_folder, tiny_pipeline, pipeline_cls):
    loaded = pipeline_cls.VARPipeline.from_pretrained(card_folder)
    kwargs = dict(class_labels=[0, 3], output_type="np")
    a = loaded(generator=torch.Generator().manual_seed(5), **kwargs).images
    b = tiny_pipeline(generator=torch.Generator().manual_seed(5), **kwargs).images
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_card_without_metrics_or_grid(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(str(tmp_path))
    card = hub.write_model_card(tiny_pipeline, str(tmp_path), sample_grid=False)
    assert card.data.eval_results is None and card.data.model_name == os.path.basename(str(tmp_path))
    assert not (tmp_path / hub.SAMPLE_GRID_FILENAME).exists()
    assert 'from_pretrained("REPO_ID")' in card.text


def test_eval_results_default_dataset_type():
    report = {"metrics": {"fid": 3.0}, "model": {"num_classes": 1000, "image_size": 256}, "reference": {
        "source": "/data/VIRTUAL_imagenet256_labeled.npz", "kind": "npz"}, "feature_extractor": {"name": "inception-v3-fid"}}
    (result,) = hub.eval_results_from_metrics(report)
    assert result.dataset_type == "imagenet-1k"
    assert result.dataset_name == "imagenet-1k 256x256 (reference: VIRTUAL_imagenet256_labeled.npz)"
    assert result.metric_name == "FID (InceptionV3 features)"
    report["model"]["num_classes"] = 10
    assert hub.eval_results_from_metrics(report)[0].dataset_type == "custom"


# ----------------------------------------------------------------------------------------------------------------------
# Snapshot layout and uploads
# ----------------------------------------------------------------------------------------------------------------------


def test_snapshot_layout_excludes_evaluation_outputs(card_folder):
    os.makedirs(os.path.join(card_folder, "samples", "0000"), exist_ok=True)
    open(os.path.join(card_folder, "samples", "0000", "00000.png"), "wb").close()
    np.savez(os.path.join(card_folder, "samples.npz"), arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    files = hub.snapshot_files(card_folder)
    weights = [f for f in files if f.endswith(".safetensors")]
    assert sorted(weights) == ["transformer/model.safetensors", "vqvae/model.safetensors"]
    assert {
        "README.md", "model_index.json", hub.SAMPLE_GRID_FILENAME, "scheduler/scheduler_config.json",
        "transformer/config.json", "vqvae/config.json", *weights,
    } <= set(files)
    # Everything else the pipeline saved (e.g. its code files for trust_remote_code) goes too; evaluation outputs not.
    saved = {p.relative_to(card_folder).as_posix() for p in Path(card_folder).rglob("*") if p.is_file()}
    assert set(files) == saved - {"samples/0000/00000.png", "samples.npz"}


def test_push_without_network_names_the_repo_and_the_cause(card_folder, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(hub.HubPushError) as info:
        hub.push_pipeline(card_folder, REPO_ID, token="hf_test", endpoint="http://127.0.0.1:9")
    message = str(info.value)
    assert REPO_ID in message and "http://127.0.0.1:9" in message
    assert "create the repository" in message and "could not connect" in message

    assert push_main([card_folder, REPO_ID, "--endpoint", "http://127.0.0.1:9", "--token", "hf_test"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("var-hf push: error: ") and "could not connect" in err and err.count("\n") == 1


def test_push_rejects_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        hub.push_pipeline(str(tmp_path), REPO_ID, endpoint="http://127.0.0.1:9")


class _RecordingHub(http.server.BaseHTTPRequestHandler):
    """Answers repo creation with `create_status` and the model-card check with `validate_status`, refuses everything
    else (the upload) with 403, and records the requests."""

    def _reply(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, json.loads(body or b"{}"), self.headers.get("authorization")))
        if self.path == "/api/repos/create":
            if self.server.create_status == 200:
                self._reply(200, {"url": f"http://127.0.0.1:{self.server.server_port}/{REPO_ID}"})
            else:
                self._reply(self.server.create_status, {"error": "Invalid username or password."})
        elif self.path == "/api/validate-yaml":
            if self.server.validate_status == 200:
                self._reply(200, {"errors": [], "warnings": []})
            else:
                self._reply(400, {"errors": [{"message": '"license" must be one of [apache-2.0, mit, ...]'}]})
        else:
            self._reply(403, {"error": 'You don\'t have the rights to create a model under the namespace "user"'})

    def do_GET(self):
        self.server.requests.append((self.path, None, self.headers.get("authorization")))
        self._reply(404, {"error": "Repository not found"})

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHub)
    server.requests, server.create_status, server.validate_status = [], 200, 200
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_push_sends_the_snapshot_and_explains_a_refused_upload(card_folder, local_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{local_hub.server_port}"
    with pytest.raises(hub.HubPushError) as info:
        hub.push_pipeline(card_folder, REPO_ID, token="hf_test", private=True, endpoint=endpoint)
    message = str(info.value)
    assert "upload the pipeline" in message and REPO_ID in message and "HTTP 403" in message
    assert "may not write to this namespace" in message

    (create_path, create_body, auth), (validate_path, validate_body, _), (upload_path, upload_body, _) = (
        local_hub.requests[:3]
    )
    assert create_path == "/api/repos/create" and auth == "Bearer hf_test"
    assert (create_body["organization"], create_body["name"], create_body["visibility"]) == ("user", "tiny-var", "private")
    # huggingface_hub sends the card for validation before uploading: it is our README.md.
    assert validate_path == "/api/validate-yaml"
    assert validate_body["content"] == open(os.path.join(card_folder, "README.md"), encoding="utf-8").read()
    assert upload_path == f"/api/models/{REPO_ID}/preupload/main"
    assert sorted(f["path"] for f in upload_body["files"]) == hub.snapshot_files(card_folder)


def test_push_explains_an_invalid_token(card_folder, local_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    local_hub.create_status = 401
    with pytest.raises(hub.HubPushError, match=r"HTTP 401: not logged in.*hf auth login"):
        hub.push_pipeline(card_folder, REPO_ID, token="hf_test", endpoint=f"http://127.0.0.1:{local_hub.server_port}")


def test_push_explains_a_rejected_model_card(card_folder, local_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    local_hub.validate_status = 400
    with pytest.raises(hub.HubPushError, match=r"(?s)upload the pipeline.*rejected the model card.*license"):
        hub.push_pipeline(card_folder, REPO_ID, token="hf_test", endpoint=f"http://127.0.0.1:{local_hub.server_port}")


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: everything is checked before anything is written
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def bare_folder(tiny_pipeline, tmp_path):
    """A saved pipeline without a card."""
    folder = tmp_path / "tiny-var"
    tiny_pipeline.save_pretrained(str(folder))
    return folder


def _tree(folder):
    return sorted((p.relative_to(folder).as_posix(), p.read_bytes()) for p in Path(folder).rglob("*") if p.is_file())


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["{folder}", "not a repo id"], "repo id"),
        (["{folder}", "user/name/extra"], "repo id"),
        (["{folder}", "user/-bad--name.."], "repo id"),
        (["{tmp}/missing", REPO_ID], "model_index.json"),
        (["{tmp}", REPO_ID], "model_index.json"),
        (["{folder}", REPO_ID, "--license", ""], "license"),
        (["{folder}", REPO_ID, "--license", "  "], "license"),
        (["{folder}", REPO_ID, "--metrics", "{tmp}/missing.json"], "missing.json"),
        (["{folder}", REPO_ID, "--metrics", "{bad_json}"], "not valid JSON"),
        (["{folder}", REPO_ID, "--metrics", "{list_json}"], "metrics"),
        (["{folder}", REPO_ID, "--write-card", "--no-card"], "--no-card"),
        (["{folder}", REPO_ID, "--bogus"], "--bogus"),
    ],
    ids=["space_in_id", "three_parts", "bad_chars", "missing_folder", "not_a_pipeline", "empty_license",
         "blank_license", "missing_metrics", "metrics_not_json", "metrics_not_an_object", "card_flags", "unknown_flag"],
)
def test_push_refuses_bad_input_before_writing(bare_folder, tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    values = dict(folder=str(bare_folder), tmp=str(tmp_path), bad_json=_write(tmp_path / "bad.json", "{nope"),
                  list_json=_write(tmp_path / "list.json", "[1, 2]"))
    argv = [a.format(**values) for a in argv] + ["--endpoint", "http://127.0.0.1:9", "--token", "hf_test"]
    before = _tree(bare_folder)
    assert push_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("var-hf push: error: ") and err.count("\n") == 1 and needle in err, err
    assert _tree(bare_folder) == before, "nothing may be written before every input is valid"


def test_card_flags_without_a_card_to_write_are_refused(card_folder, capsys):
    before = _tree(card_folder)
    for extra in (["--metrics", "m.json"], ["--no-card", "--dataset", "x/y"]):
        assert push_main([card_folder, REPO_ID, *extra, "--endpoint", "http://127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        assert "--write-card" in err and err.count("\n") == 1
    assert _tree(card_folder) == before


def test_push_pipeline_checks_the_repo_id_before_writing_a_card(bare_folder):
    before = _tree(bare_folder)
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        hub.push_pipeline(str(bare_folder), "bad id", endpoint="http://127.0.0.1:9")
    assert _tree(bare_folder) == before


def test_card_never_publishes_a_non_finite_metric(bare_folder, caplog):
    report = {"metrics": {"fid": float("nan"), "inception_score": float("inf"), "precision": 0.5, "recall": "x"},
              "model": {"num_classes": 4, "image_size": 8}}
    with caplog.at_level("WARNING"):
        card = hub.write_model_card(str(bare_folder), repo_id=REPO_ID, metrics=report, sample_grid=False)
    assert [r.metric_type for r in card.data.eval_results] == ["precision"]
    assert "| Precision | 0.5000 |" in card.text and "| FID |" not in card.text and "nan" not in card.text.lower()
    assert "fid" in caplog.text and "not a finite number" in caplog.text
    meta = _front_matter((bare_folder / "README.md").read_text(encoding="utf-8"))
    values = [m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]]
    assert values == [0.5]


def test_empty_tags_and_datasets_are_dropped_with_a_warning(bare_folder, caplog):
    with caplog.at_level("WARNING"):
        card = hub.write_model_card(str(bare_folder), tags=["", "extra"], datasets=["  ", "user/data"],
                                    sample_grid=False)
    assert card.data.datasets == ["user/data"] and "" not in card.data.tags and "extra" in card.data.tags
    assert "empty tag" in caplog.text and "empty dataset" in caplog.text
    with pytest.raises(ValueError, match="license"):
        hub.write_model_card(str(bare_folder), license="", sample_grid=False)


def test_card_files_have_the_usual_permissions(bare_folder):
    mask = os.umask(0)
    os.umask(mask)
    hub.write_model_card(str(bare_folder), sample_grid=True, grid_classes=[0, 1])
    for name in ("README.md", hub.SAMPLE_GRID_FILENAME):
        assert (bare_folder / name).stat().st_mode & 0o777 == 0o666 & ~mask
