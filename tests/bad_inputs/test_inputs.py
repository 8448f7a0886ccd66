"""Bad input gets one clear line and lesion's exit code on every entry path; nothing is read or written wrongly.

CLI cases mostly run `lesion.cli.main` in this process (the very code the console script runs); a
representative few go through the `lesion` script, `lesion launch` (one and two processes) and `mlflow run`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs.conftest import assert_clean_error, run_entry
from tests.conftest import REPO, subprocess_env

DATA = "synthetic:n=24,size=64,seed=5"
SLOW = pytest.mark.slow
ACCELERATE_NOTICE = "were not passed to `accelerate launch`"


def cli(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """`lesion ARGV` in this process, as a CompletedProcess for assert_clean_error."""
    from lesion.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["lesion", *argv], code, captured.out, captured.err)


def assert_launched_cleanly(proc: subprocess.CompletedProcess) -> None:
    output = proc.stdout + proc.stderr
    assert ACCELERATE_NOTICE not in output and "CalledProcessError" not in output, output[-3000:]
    assert "ChildFailedError" not in output and "exitcode" not in output, output[-3000:]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved segmenter (random weights: what the tests check does not depend on them)."""
    from lesion.config import ModelConfig
    from lesion.models import build_model, save_model

    return save_model(build_model(ModelConfig()), tmp_path_factory.mktemp("model") / "model", image_size=64)


@pytest.fixture
def broken_model(tmp_path, model_dir) -> Path:
    folder = tmp_path / "broken-model"
    folder.mkdir()
    for item in model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    return folder


def disc(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - h / 2) ** 2 + (xx - w / 3) ** 2) < (h / 3) ** 2


def image_folder(root: Path, n: int = 3, size: tuple[int, int] = (24, 32)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


# --------------------------------------------------------------------------- 1. one line through every entry path


@pytest.mark.parametrize("via", ["cli", pytest.param("launch", marks=SLOW), pytest.param("launch:2", marks=SLOW),
                                 pytest.param("mlflow", marks=SLOW)])
def test_a_negative_seed_is_one_line_with_lesions_exit_code_on_every_path(via, tmp_path, tracking):
    proc = run_entry(via, "finetune", {"data": DATA, "seed": -1, "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"parameter seed=-1 must be an integer in \[0, \d+\]")
    assert_launched_cleanly(proc)


@pytest.mark.parametrize("via", [pytest.param("launch:2", marks=SLOW), pytest.param("mlflow", marks=SLOW)])
def test_an_error_on_the_main_rank_alone_is_one_line(via, tmp_path, tracking):
    """Only rank 0 discovers the data; rank 1 waits at a barrier that breaks when rank 0 exits."""
    proc = run_entry(via, "finetune", {"data": tmp_path / "missing", "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"missing: no such folder")
    assert_launched_cleanly(proc)


@SLOW
def test_a_usage_error_of_every_rank_is_printed_once(tmp_path, tracking):
    proc = run_entry("launch:2", "finetune", {"bogus": 1, "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"unrecognized arguments: --bogus 1; see lesion finetune --help")
    assert "usage:" not in proc.stderr


def test_an_int_written_as_mlflow_writes_floats_is_read(tmp_path, capsys):
    from lesion.cli import entry_parser
    from lesion.config import FinetuneConfig, from_args

    cfg = from_args(FinetuneConfig, entry_parser("finetune").parse_args(["--epochs", "3.0", "--seed", "7.0"]))
    assert (cfg.train.epochs, cfg.run.seed) == (3, 7)
    proc = cli(["finetune", "--epochs", "2.5"], capsys)
    assert_clean_error(proc, "finetune", r"parameter epochs='2.5' is not a valid int")


@SLOW
def test_a_successful_launch_prints_no_accelerate_notice(tmp_path, tracking):
    proc = run_entry("launch", "finetune", {"data": DATA, "epochs": 1, "max_steps": 1, "register": "false",
                                            "output_dir": tmp_path / "out"}, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_launched_cleanly(proc)


def test_the_launcher_runs_the_cli_module_with_every_value_accelerate_would_default():
    from lesion.launch import accelerate_args

    for n in (1, 2):
        argv = accelerate_args("finetune", n, ["--epochs", "1"])
        assert argv[-5:] == ["-m", "lesion.cli", "finetune", "--epochs", "1"], "no path to a checkout's pipelines/"
        for flag in ("--num_processes", "--num_machines", "--mixed_precision", "--dynamo_backend"):
            assert flag in argv


@pytest.mark.parametrize("via", ["cli", pytest.param("mlflow", marks=SLOW)])
def test_a_timm_encoder_smp_cannot_use_is_one_line(via, tmp_path, tracking):
    proc = run_entry(via, "finetune", {"data": DATA, "encoder": "vit_tiny_patch16_224", "epochs": 1,
                                       "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"encoder='vit_tiny_patch16_224' is a timm model smp cannot build a unet "
                                         r"from \(Unsupported model downsampling pattern")


@pytest.mark.parametrize("argv", [
    ["finetune", "--encoder", "hf-hub:timm/resnet18.a1_in1k"],
    ["selftrain", "--student_encoder", "hf_hub:timm/resnet18.a1_in1k"],
    ["pretrain", "--encoder", "tu-hf-hub:timm/resnet18.a1_in1k"],
])
def test_a_hugging_face_hub_encoder_is_refused_before_anything_downloads(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # unfixed code fails in timm's download at once, not after retries
    proc = cli([*argv, "--data", DATA, "--output_dir", str(tmp_path / "out")], capsys)
    assert_clean_error(proc, argv[0], r"encoder='t?u?-?hf[-_]hub:timm/resnet18.a1_in1k' must be a timm model name .*"
                                      r"not a Hugging Face Hub id")


def test_a_model_folder_whose_encoder_is_a_hub_id_is_refused(broken_model):
    from lesion.errors import ConfigError
    from lesion.models import load_model

    meta = json.loads((broken_model / "model.json").read_text())
    (broken_model / "model.json").write_text(json.dumps({**meta, "encoder": "tu-hf-hub:timm/resnet18.a1_in1k"}))
    with pytest.raises(ConfigError, match=r"model.json: parameter encoder='tu-hf-hub:.*not a Hugging Face Hub id"):
        load_model(str(broken_model))


@pytest.mark.parametrize("entry", ["evaluate", "predict", "export"])
@pytest.mark.parametrize("meta, match", [
    ("{not json", r"model.json: not readable JSON"),
    ("[1, 2, 3]", r"model.json holds a JSON list, not an object"),
    ('{"kind": "lesion-segmenter", "arch": "unet", "encoder": "tu-resnet18"}', r"model.json has no image_size"),
    ('{"image_size": 64, "encoder": 18}', r"model.json: encoder=18 is not a str"),
    # a misspelt mode, or a newer lesion's one: refused on loading, not as a traceback after the first image
    ('{"image_size": 64, "postprocess": "central_fil"}', r"model.json: parameter postprocess='central_fil' must be one of"),
])
def test_a_model_json_that_is_not_lesions_is_one_line(entry, meta, match, broken_model, tmp_path, tracking, capsys):
    (broken_model / "model.json").write_text(meta)
    args = {"evaluate": ["--data", DATA, "--output_dir", str(tmp_path / "out")],
            "predict": ["--input", str(image_folder(tmp_path / "in")), "--out", str(tmp_path / "pred")],
            "export": ["--out", str(tmp_path / "m.onnx")]}[entry]
    proc = cli([entry, "--model", str(broken_model), *args], capsys)
    assert_clean_error(proc, entry, match)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[: len(b) // 2], r"model.safetensors: not a readable safetensors file \(.*\); the file is truncated"),
    (lambda b: b"PK\x03\x04" + b"\0" * 64, r"model.safetensors: not a readable safetensors file"),
    (lambda b: b"", r"model.safetensors: not a readable safetensors file"),
])
def test_weights_that_are_not_safetensors_or_are_truncated_are_one_line(damage, match, broken_model, tmp_path, capsys):
    weights = broken_model / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    proc = cli(["predict", "--model", str(broken_model), "--input", str(image_folder(tmp_path / "in")),
                "--out", str(tmp_path / "pred")], capsys)
    assert_clean_error(proc, "predict", match)


def test_truncated_weights_through_the_lesion_script(broken_model, tmp_path):
    weights = broken_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    proc = run_entry("cli", "predict", {"model": broken_model, "input": image_folder(tmp_path / "in"),
                                        "out": tmp_path / "pred"}, tmp_path)
    assert_clean_error(proc, "predict", r"not a readable safetensors file")


@pytest.mark.parametrize("entry", ["evaluate", "predict"])
@pytest.mark.parametrize("below", [False, True])
def test_out_that_is_an_existing_file_is_one_line(entry, below, model_dir, tmp_path, tracking, capsys):
    existing = tmp_path / "taken.txt"
    existing.write_text("keep me")
    out = existing / "sub" if below else existing
    args = {"evaluate": ["--data", DATA, "--output_dir", str(tmp_path / "o")],
            "predict": ["--input", str(image_folder(tmp_path / "in"))]}[entry]
    proc = cli([entry, "--model", str(model_dir), "--out", str(out), *args], capsys)
    assert_clean_error(proc, entry, rf"out={re.escape(str(out))} is (under {re.escape(str(existing))}, )?an "
                                    r"existing file, not a folder")
    assert existing.read_text() == "keep me"


# --------------------------------------------------------------------------- 2. masks read the same in every encoding


def _palette(mask: np.ndarray, background: tuple, lesion: tuple) -> Image.Image:
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.astype(np.uint8).tobytes())
    img.putpalette([*background, *lesion] + [0, 0, 0] * 254)
    return img


ENCODINGS = {
    "l_0_255.png": lambda m: Image.fromarray(m.astype(np.uint8) * 255),
    "l_0_1.png": lambda m: Image.fromarray(m.astype(np.uint8)),
    "one_bit.png": lambda m: Image.fromarray(m.astype(np.uint8) * 255).convert("1"),
    "i16_0_65535.png": lambda m: Image.fromarray(m.astype(np.uint16) * 65535),
    "i16_0_1.png": lambda m: Image.fromarray(m.astype(np.uint16)),
    "i16_0_1.tif": lambda m: Image.fromarray(m.astype(np.uint16)),
    "palette_red.png": lambda m: _palette(m, (0, 0, 0), (255, 0, 0)),
    "palette_dark_on_light.png": lambda m: _palette(m, (230, 230, 230), (40, 20, 10)),
    "palette_black_on_white.png": lambda m: _palette(m, (255, 255, 255), (0, 0, 0)),
    "rgb_white.png": lambda m: Image.fromarray(np.dstack([m.astype(np.uint8) * 255] * 3)),
    "rgb_green.png": lambda m: Image.fromarray(np.dstack([0 * m, m * 200, 0 * m]).astype(np.uint8)),
    "rgba_transparent_background.png": lambda m: Image.fromarray(
        np.dstack([np.full(m.shape, 255, np.uint8)] * 3 + [m.astype(np.uint8) * 255])),
}


def test_one_lesion_in_every_mask_encoding_reads_the_same_everywhere(tmp_path):
    """read_mask, the preprocessing cache (working and original size) and the training dataset agree."""
    from lesion.data.cache import PreprocessCache, resize_mask
    from lesion.data.datasets import SegmentationDataset
    from lesion.data.io import read_mask
    from lesion.data.splits import Row

    truth = disc()
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*truth.shape, 3), dtype=np.uint8)).save(image)
    cache = PreprocessCache(tmp_path / "cache", 32, 10**6)
    rows = []
    for name, encode in ENCODINGS.items():
        path = tmp_path / name
        encode(truth).save(path)
        lesion, nonbinary = read_mask(path, 10**6)
        assert lesion.dtype == bool and (lesion == truth).all(), name
        assert nonbinary == 0, name
        assert (cache.original_mask(str(image), str(path)) == truth).all(), name
        assert (cache.load(str(image), str(path)).mask == resize_mask(truth, 32)).all(), name
        rows.append(Row(name, str(image), str(path), "train", True, "test"))
    dataset = SegmentationDataset(rows, cache)
    for i in range(len(rows)):
        assert (dataset[i]["target"][0].numpy() == resize_mask(truth, 32)).all(), rows[i].id


def test_a_0_1_mask_saved_as_jpeg_is_refused_not_read_as_empty(tmp_path):
    from lesion.data.io import read_mask
    from lesion.errors import DataError

    path = tmp_path / "labels.jpg"
    Image.fromarray(disc(64, 64).astype(np.uint8)).save(path, quality=70)
    with pytest.raises(DataError, match=r"labels.jpg: mask holds values 0..\d+ .* none above 128.*saved as JPEG"):
        read_mask(path, 10**6)


def folder_data(root: Path, n: int, lesion: bool) -> Path:
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"c{i:02d}.png")
        mask = disc(32, 32) if lesion else np.zeros((32, 32), bool)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"c{i:02d}_segmentation.png")
    return root


def test_a_data_set_whose_masks_are_all_empty_is_not_usable(tmp_path, tracking, capsys):
    data = folder_data(tmp_path / "empty", 10, lesion=False)
    proc = cli(["data", "inspect", str(data), "--cache_dir", str(tmp_path / "cache")], capsys)
    assert proc.returncode == 1, proc.stdout
    assert "ERROR   all 10 masks are empty (no lesion pixel)" in proc.stdout
    assert "verdict: NOT usable" in proc.stdout

    proc = cli(["finetune", "--data", str(data), "--image_size", "32", "--epochs", "1",
                "--output_dir", str(tmp_path / "out"), "--register", "false"], capsys)
    assert_clean_error(proc, "finetune", r"all \d+ labelled training masks are empty \(no lesion pixel")


def test_a_data_set_with_some_empty_masks_is_usable(tmp_path, capsys):
    data = folder_data(tmp_path / "some", 4, lesion=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "masks" / "c00_segmentation.png")
    proc = cli(["data", "inspect", str(data), "--cache_dir", str(tmp_path / "cache")], capsys)
    assert proc.returncode == 0, proc.stdout
    assert "c00_segmentation.png: mask is empty" in proc.stdout


def test_more_labels_than_training_pairs_is_an_error_not_a_silent_cap(tmp_path, tracking, capsys):
    proc = cli(["finetune", "--data", DATA, "--labels", "1000", "--epochs", "1",
                "--output_dir", str(tmp_path / "out"), "--register", "false"], capsys)
    assert_clean_error(proc, "finetune", r"labels=1000 but the training split has only \d+ image\(s\) with masks; "
                                         r"pass labels=\d+ or fewer")


# --------------------------------------------------------------------------- 3. predict writes what it counts, inside out


def test_two_inputs_with_one_stem_are_refused_before_any_output(model_dir, tmp_path, capsys):
    images = image_folder(tmp_path / "in", n=1)
    Image.open(images / "img0.png").convert("RGB").save(images / "img0.jpg")
    proc = cli(["predict", "--model", str(model_dir), "--input", str(images), "--out", str(tmp_path / "pred")], capsys)
    assert_clean_error(proc, "predict", r"img0.jpg and .*img0.png would both be written as img0_segmentation.png")
    assert not (tmp_path / "pred").exists()


def test_predict_counts_what_it_writes_and_never_writes_through_a_symlink(model_dir, tmp_path, capsys):
    images = image_folder(tmp_path / "in", n=3)
    (images / "sub").mkdir()
    Image.open(images / "img0.png").save(images / "sub" / "img0.png")  # the same stem in a sub-folder: its own name
    out = tmp_path / "pred"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    (out / "img1_segmentation.png").symlink_to(outside)
    (out / "predictions.csv").symlink_to(outside)
    proc = cli(["predict", "--model", str(model_dir), "--input", str(images), "--out", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr
    assert outside.read_text() == "not yours"
    assert not (out / "predictions.csv").is_symlink() and len((out / "predictions.csv").read_text().splitlines()) == 5
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*_segmentation.png"))
    assert written == ["img0_segmentation.png", "img1_segmentation.png", "img2_segmentation.png",
                       "sub/img0_segmentation.png"]
    assert not (out / "img1_segmentation.png").is_symlink()
    assert Image.open(out / "img1_segmentation.png").size == (32, 24)
    assert f"wrote {len(written)} mask(s) and overlay(s)" in proc.stdout
    assert len(list(out.rglob("*_overlay.png"))) == len(written)


def test_predict_refuses_a_sub_folder_that_leads_out_of_out(model_dir, tmp_path, capsys):
    images = image_folder(tmp_path / "in" / "sub", n=1).parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "pred"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    proc = cli(["predict", "--model", str(model_dir), "--input", str(images), "--out", str(out)], capsys)
    assert_clean_error(proc, "predict", r"pred/sub leads to .*elsewhere, outside the output folder")
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------- 4. serving


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """The pyfunc as `mlflow models serve` loads it (models from code), without starting a server."""
    import mlflow

    from lesion.serving import pyfunc_signature

    path = tmp_path_factory.mktemp("served") / "pyfunc"
    mlflow.pyfunc.save_model(path, python_model=str(REPO / "lesion" / "serving_model.py"),
                             artifacts={"model_dir": str(model_dir)}, signature=pyfunc_signature(),
                             code_paths=[str(REPO / "lesion")], pip_requirements=[])  # nothing to infer
    return mlflow.pyfunc.load_model(str(path))


def invoke(model, body: dict) -> tuple[int, dict]:
    """What the scoring server answers: its invocations() and the error handler around it."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        result = scoring_server.invocations(json.dumps(body), "application/json", model,
                                            model.metadata.get_input_schema())
        return result.status, json.loads(result.response)
    except MlflowException as err:
        return err.get_http_status_code(), json.loads(err.serialize_as_json())


def png_b64(shape=(24, 32)) -> str:
    import base64
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("params, image, match", [
    ({"threshold": 1.5}, None, r"^params: threshold=1.5 must be a probability in \[0, 1\]"),
    ({"threshold": -0.1}, None, r"^params: threshold=-0.1 must be a probability in \[0, 1\]"),
    ({}, "bm90IGFuIGltYWdl", r"^row 0: 'image' is not a readable image"),
])
def test_serving_errors_are_400_with_a_one_line_body(served, params, image, match):
    body = {"dataframe_split": {"columns": ["image"], "data": [[image or png_b64()]]}, "params": params}
    status, answer = invoke(served, body)
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and "\n" not in answer["message"], answer
    assert re.search(match, answer["message"]), answer["message"]
    status, answer = invoke(served, {**body, "params": {"threshold": 0.5}, "dataframe_split": {
        "columns": ["image"], "data": [[png_b64()]]}})
    assert status == 200 and answer["predictions"][0]["height"] == 24


# --------------------------------------------------------------------------- 5. installed, not only checked out


@SLOW
def test_a_non_editable_install_works_outside_the_checkout(tmp_path):
    import shutil
    import sysconfig

    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "mlruns", "mlartifacts", "*.db", "__pycache__", "build", "dist", "*.egg-info",
        ".pytest_cache"))  # a copy: building in place would leave build/ and *.egg-info in the checkout
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # A venv's --system-site-packages would expose the base interpreter's packages, not this venv's torch & co:
    # point the new venv at them with a .pth path line (path lines do not run this venv's editable-install hook).
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "lesion-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in subprocess_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["LESION_CACHE_DIR"] = str(tmp_path / "cache")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*cmd: str, timeout: int = 600) -> str:
        proc = subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-4000:]}"
        assert "Traceback" not in output, output[-4000:]
        return output

    run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--ignore-installed", "--disable-pip-version-check", str(source))  # never touches the venv running the tests
    where = run(str(venv / "bin" / "python"), "-c", "import lesion, tuning; print(lesion.__file__, tuning.__file__)")
    assert where.split()[0].startswith(str(site)) and where.split()[1].startswith(str(site)), where
    lesion = str(venv / "bin" / "lesion")
    assert "launch" in run(lesion, "--help")
    common = ["--data", DATA, "--epochs", "1", "--max_steps", "1", "--register", "false"]
    run(lesion, "finetune", *common, "--run_name", "plain")
    run(lesion, "launch", "finetune", "--num_processes", "1", "--", *common, "--run_name", "launched")
    best = next((work / "outputs" / "finetune" / "launched").rglob("model.safetensors")).parent
    images = image_folder(work / "images", n=2)
    assert "wrote 2 mask(s)" in run(lesion, "predict", "--model", str(best), "--input", str(images), "--out", "pred")
    assert len(list((work / "pred").glob("*_segmentation.png"))) == 2


@pytest.mark.parametrize("argv, match", [
    (["launch", "finetune", "--num_processes", "-1", "--", "--epochs", "1"], r"num_processes=-1: pass 1 or more"),
    (["launch", "finetune", "--epochs", "1"], r"--epochs 1: put the entry point's options after --, e\.g\. "
                                              r"lesion launch finetune --num_processes 1 -- --epochs 1"),
])
def test_launch_usage_errors_say_the_fix(argv, match, capsys):
    proc = cli(argv, capsys)
    assert_clean_error(proc, "launch", match)
