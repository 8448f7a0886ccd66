"""Using the champion: ONNX export with parity, ONNX predict, and REST serving with clear 400s."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from lesion.config import ExportConfig, FinetuneConfig, PredictConfig, from_flat
from lesion.export import run_export
from lesion.predict import run_predict
from lesion.finetune import run_finetune
from tests.conftest import subprocess_env

BIN = Path(sys.executable).parent


@pytest.fixture
def champion(tmp_path, tracking):
    cfg = from_flat(FinetuneConfig, {"data": "synthetic:n=20,size=64,seed=7", "epochs": 1, "batch_size": 8,
                                     "output_dir": str(tmp_path / "out"), "run_name": "champ"})
    return run_finetune(cfg)


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: the decompression-bomb case."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_onnx_export_matches_torch_and_predicts(champion, tmp_path):
    out = run_export(from_flat(ExportConfig, {"model": "models:/lesion-segmenter@champion",
                                              "out": str(tmp_path / "champion.onnx")}))
    assert out["max_abs_diff"] < 1e-4
    assert out["run_id"] == champion["run_id"]
    assert [a.path for a in MlflowClient().list_artifacts(champion["run_id"], "onnx")] == ["onnx/champion.onnx"]

    images = tmp_path / "images"
    images.mkdir()
    from lesion.data.synthetic import generate_one

    for i, width in enumerate((96, 130)):
        Image.fromarray(generate_one(i, 64, 1)[0][:, :width]).save(images / f"x{i}.png")
    run_predict(from_flat(PredictConfig, {"model": out["onnx"], "input": str(images), "out": str(tmp_path / "pred")}))
    masks = sorted((tmp_path / "pred").glob("*_segmentation.png"))
    assert [Image.open(m).size for m in masks] == [Image.open(p).size for p in sorted(images.iterdir())]


def post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_rest_serving_answers_masks_and_rejects_bad_input(champion, tmp_path):
    from lesion.launch import free_port

    port = free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/lesion-segmenter@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the scoring server did not come up"
            time.sleep(1)

        from lesion.data.synthetic import generate_one

        image = generate_one(3, 64, 2)[0]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[png_b64(image)], [png_b64(image[:, :70])]]},
                           "params": {"return_probabilities": True}}).encode()
        status, answer = post(port, body)
        assert status == 200, answer
        first, second = answer["predictions"]
        mask = Image.open(io.BytesIO(base64.b64decode(first["mask"])))
        assert mask.size == (image.shape[1], image.shape[0]) and (first["height"], first["width"]) == image.shape[:2]
        assert second["width"] == 70 and "probabilities" in first

        for bad, fragment in (
            (json.dumps({"dataframe_split": {"columns": ["image"],
                                             "data": [[base64.b64encode(b"not an image").decode()]]}}).encode(),
             "not a readable image"),
            (b"", ""),
            (json.dumps({"dataframe_split": {"columns": ["image"],
                                             "data": [[base64.b64encode(huge_png_header(20000, 20000)).decode()]]}}).encode(),
             "pixel limit"),
            (json.dumps({"dataframe_split": {"columns": ["image"], "data": [[png_b64(image)]]},
                         "params": {"threshold": 1.5}}).encode(), "threshold=1.5 must be a probability in [0, 1]"),
            (json.dumps({"dataframe_split": {"columns": ["image"], "data": [[png_b64(image)]]},
                         "params": {"postprocess": "biggest"}}).encode(), "postprocess='biggest' must be one of"),
        ):
            status, answer = post(port, bad)
            assert status == 400, (status, answer)
            assert fragment in json.dumps(answer)
            if fragment:  # lesion's own errors: one line, not an echo of the request's DataFrame
                assert "\n" not in answer["message"] and "stack_trace" not in answer, answer
                assert "Failed to predict data" not in answer["message"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.poll() is not None, "the server must be stopped"
