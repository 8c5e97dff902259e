"""What the official ``clearml`` SDK (2.1.12) reports is kept by the embedded server and read
back equal: artifacts (dict, file, folder) through the files server, models
(``OutputModel`` → ``InputModel``), ``Task.delete()`` with its models and files.

Each SDK script runs in a subprocess with nothing but a clearml.conf written from the server's
own snippet (``clearml_conf_snippet``), as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from helpers import clean_env, run_sdk

pytestmark = pytest.mark.e2e


ARTIFACTS_SCRIPT = """
import json, os, sys
from pathlib import Path
from clearml import Task

work = Path(sys.argv[1])
(work / "folder" / "sub").mkdir(parents=True)
(work / "folder" / "a.txt").write_text("alpha")
(work / "folder" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
blob = os.urandom(3 * 1024 * 1024 + 17)
(work / "blob.bin").write_bytes(blob)

task = Task.init(project_name="artifacts ä", task_name="keeps 'artifacts'",
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
params = {"lr": 0.5, "name": "naïve \\"quoted\\""}
assert task.upload_artifact("params", params, wait_on_upload=True)
assert task.upload_artifact("blob", work / "blob.bin", wait_on_upload=True)
assert task.upload_artifact("folder", work / "folder", wait_on_upload=True)
task_id = task.id
task.close()

got = Task.get_task(task_id=task_id)
params = got.artifacts["params"].get()
blob_copy = Path(got.artifacts["blob"].get_local_copy())
folder_copy = Path(got.artifacts["folder"].get_local_copy())
print("RESULT " + json.dumps({
    "id": task_id,
    "names": sorted(got.artifacts),
    "params": params,
    "blob_equal": blob_copy.read_bytes() == blob,
    "folder_a": (folder_copy / "a.txt").read_text(),
    "folder_b_equal": (folder_copy / "sub" / "b.bin").read_bytes()
        == (work / "folder" / "sub" / "b.bin").read_bytes(),
    "uris": {k: v.url for k, v in got.artifacts.items()},
}))
"""


def test_sdk_artifacts_round_trip(embedded_server: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = run_sdk(embedded_server, tmp_path, ARTIFACTS_SCRIPT, str(work))
    assert result["names"] == ["blob", "folder", "params"]
    assert result["params"] == {"lr": 0.5, "name": 'naïve "quoted"'}
    assert result["blob_equal"] is True
    assert result["folder_a"] == "alpha"
    assert result["folder_b_equal"] is True
    # the files live in the data dir, in ClearML's fileserver layout, reached under /files
    for name, url in result["uris"].items():
        assert url.startswith(embedded_server.url + "/files/"), (name, url)
        # the URL quotes the stored name once (as with ClearML's fileserver)
        rel = unquote(url[len(embedded_server.url + "/files/") :])
        assert (embedded_server.data_dir / "files" / rel).is_file(), url
    task = embedded_server.send("tasks.get_by_id", {"task": result["id"]})["task"]
    keys = [a["key"] for a in task["execution"]["artifacts"]]
    assert keys == ["blob", "folder", "params"]


MODELS_SCRIPT = """
import json, sys
from pathlib import Path
from clearml import InputModel, Model, OutputModel, Task

work = Path(sys.argv[1])
weights = work / "model.pt"
data = b"weights \\x00\\x01" * 5000
weights.write_bytes(data)
task = Task.init(project_name="models", task_name="trains a model", output_uri=True,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
out = OutputModel(task=task, name="my model", framework="PyTorch", label_enumeration={"cat": 1})
out.set_metadata("epochs", "3", "int")
out.update_weights(weights_filename=str(weights), iteration=3)
out.publish()
model_id = out.id
task_id = task.id
task.close()

loaded = InputModel(model_id=model_id)
local = Path(loaded.get_weights())
user = Task.create(project_name="models", task_name="uses the model")
user.connect(loaded)
print("RESULT " + json.dumps({
    "task": task_id,
    "model": model_id,
    "name": loaded.name,
    "framework": loaded.framework,
    "labels": loaded.labels,
    "published": loaded.published,
    "metadata": loaded.get_metadata("epochs"),
    "weights_equal": local.read_bytes() == data,
    "uri": loaded.url,
    "found": [m.id for m in Model.query_models(project_name="models")],
    "task_models": [m.id for m in Task.get_task(task_id=task_id).models["output"]],
}))
"""


def test_sdk_output_model_loads_as_input_model(embedded_server: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = run_sdk(embedded_server, tmp_path, MODELS_SCRIPT, str(work))
    assert result["name"] == "my model"
    assert result["framework"] == "PyTorch"
    assert result["labels"] == {"cat": 1}
    assert result["published"] is True
    assert result["metadata"] == "3"
    assert result["weights_equal"] is True
    assert result["model"] in result["found"]
    assert result["task_models"] == [result["model"]]
    model = embedded_server.send("models.get_by_id", {"model": result["model"]})["model"]
    assert model["task"] == result["task"]
    assert model["ready"] is True
    assert model["uri"].startswith(embedded_server.url + "/files/")


DELETE_SCRIPT = """
import json, sys
from pathlib import Path
from clearml import OutputModel, Task

work = Path(sys.argv[1])
(work / "w.bin").write_bytes(b"w" * 1000)
task = Task.init(project_name="deleting", task_name="to delete", output_uri=True,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
task.upload_artifact("data", {"a": 1}, wait_on_upload=True)
out = OutputModel(task=task, name="doomed")
out.update_weights(weights_filename=str(work / "w.bin"))
uris = [task.artifacts["data"].url, out.url]
model_id = out.id
task_id = task.id
task.close()
deleted = Task.get_task(task_id=task_id).delete(raise_on_error=True)
print("RESULT " + json.dumps({"task": task_id, "model": model_id, "uris": uris,
                              "deleted": bool(deleted)}))
"""


def test_sdk_task_delete_removes_models_and_files(embedded_server: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = run_sdk(embedded_server, tmp_path, DELETE_SCRIPT, str(work))
    assert result["deleted"] is True
    gone = embedded_server.request("tasks.get_by_id", {"task": result["task"]})
    assert gone.status_code == 400
    assert gone.json()["meta"]["result_subcode"] == 101
    models = embedded_server.send("models.get_all", {"id": [result["model"]]})["models"]
    assert models == []
    prefix = embedded_server.url + "/files/"
    for uri in result["uris"]:
        assert uri.startswith(prefix)
        assert not (embedded_server.data_dir / "files" / unquote(uri[len(prefix) :])).exists()


def test_printed_snippet_alone_runs_task_init(tmp_path: Path) -> None:
    """A first start prints the credentials and a snippet; that snippet alone (random port,
    no environment) is a clearml.conf the SDK's Task.init accepts."""
    import socket
    import time

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in clean_env().items() if not k.startswith("HPCAGENT_SERVER_")}
    out_path = tmp_path / "server.out"
    with out_path.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "hpcagent.commands.server", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "api {" not in out_path.read_text() or "}\n}" not in out_path.read_text():
            assert server.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
        text = out_path.read_text()
        snippet = text[text.index("api {") : text.index("}\n}") + 3]
        assert f":{port}/files" in snippet
        conf = tmp_path / "clearml.conf"
        conf.write_text(snippet)
        while True:  # the snippet is printed just before the server listens
            try:
                requests.get(f"http://127.0.0.1:{port}/debug.ping", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(0.1)
        script = """
import json
from clearml import Task
task = Task.init(project_name="snippet", task_name="from the printed snippet",
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
task.upload_artifact("x", {"ok": True}, wait_on_upload=True)
task_id = task.id
task.close()
print("RESULT " + json.dumps({"x": Task.get_task(task_id=task_id).artifacts["x"].get()}))
"""
        run_env = clean_env()
        run_env.update({"CLEARML_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
        proc = subprocess.run(
            [sys.executable, "-c", script], env=run_env, cwd=tmp_path,
            capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert 'RESULT {"x": {"ok": true}}' in proc.stdout, proc.stdout + proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


EVENTS_SCRIPT = """
import json, sys
from pathlib import Path
from clearml import StorageManager, Task

work = Path(sys.argv[1])
task = Task.init(project_name="events", task_name="reports everything",
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
logger = task.get_logger()
figure = {"data": [{"type": "bar", "x": ["a", "b"], "y": [3, 4], "name": "bars ü"}],
          "layout": {"title": "my plot"}}
for i in range(3):
    logger.report_plotly("plots", "bar", iteration=i, figure=figure)
logger.report_single_value("accuracy", 0.93)
logger.report_single_value("f1 score", 0.5)
images = {}
for i in range(3):
    png = work / f"img{i}.png"
    png.write_bytes(b"\\x89PNG fake image " + bytes([i]) * 100)
    images[i] = png.read_bytes()
    logger.report_image("debug", "sample", iteration=i, local_path=str(png))
task.flush(wait_for_uploads=True)
task_id = task.id
task.close()

got = Task.get_task(task_id=task_id)
plots = got.get_reported_plots(max_iterations=2)
samples = got.get_debug_samples("debug", "sample")
copies = {s["iter"]: Path(StorageManager.get_local_copy(s["url"])).read_bytes() for s in samples}
print("RESULT " + json.dumps({
    "id": task_id,
    "plots": [{"iter": p["iter"], "metric": p["metric"], "variant": p["variant"],
               "plot": json.loads(p["plot_str"])} for p in plots],
    "single": got.get_reported_single_values(),
    "sample_iters": sorted(s["iter"] for s in samples),
    "images_equal": all(copies[i] == images[i] for i in range(3)),
}))
"""


def test_sdk_plots_single_values_and_debug_images_read_back(
    embedded_server: Any, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = run_sdk(embedded_server, tmp_path, EVENTS_SCRIPT, str(work))
    assert [(p["metric"], p["variant"], p["iter"]) for p in result["plots"]] == [
        ("plots", "bar", 2),
        ("plots", "bar", 1),
    ]
    plot = result["plots"][0]["plot"]
    assert plot["data"][0]["x"] == ["a", "b"]
    assert plot["data"][0]["y"] == [3, 4]
    assert plot["data"][0]["name"] == "bars ü"
    assert result["single"] == {"accuracy": 0.93, "f1 score": 0.5}
    assert result["sample_iters"] == [0, 1, 2]
    assert result["images_equal"] is True
    # the single values (iteration -2**31) stay out of the scalar plots, as with ClearML
    hist = embedded_server.send("events.scalar_metrics_iter_histogram", {"task": result["id"]})
    assert all(x >= 0 for m in hist.values() for s in m.values() for x in s["x"]), hist
