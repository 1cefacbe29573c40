"""The reproduction's smoke suite (results.md, results.csv, figures) and the Colab notebook, run headless on CPU."""
import ast
import csv
import importlib.metadata
import os
import struct
import subprocess
import sys
import zipfile

import jax
import nbformat
from nbclient import NotebookClient
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiments/ is not installed: import it from the checkout, as `python -m` does
from experiments import reproduce  # noqa: E402


def png_size(path):
    """(width, height) of a PNG, read from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke suite run once through its CLI, on a small synthetic token folder (nanoGPT names)."""
    data_dir, out = tmp_path_factory.mktemp("tokens"), tmp_path_factory.mktemp("smoke")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20000), ("val", 4000)):
        rng.integers(0, 64, n).astype(np.uint16).tofile(data_dir / f"{split}.bin")
    command = [sys.executable, "-m", "experiments.reproduce", "--suite", "smoke", "--out", str(out),
               "--data_dir", str(data_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, command, result


@pytest.mark.slow
def test_smoke_suite_writes_results_and_figures(smoke):
    out, command, result = smoke
    names = [run.name for run in reproduce.SUITES["smoke"].runs]
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == names
    for r in rows:
        assert r["status"] == "finished" and r["step"] == r["train_steps"] == "6", r
        for key in ("train_loss", "val_loss", "wall_time_s", "tokens_per_s", "params", "seed_train_loss",
                    "seed_val_loss"):
            assert float(r[key]) > 0, (key, r)
    assert float(rows[0]["embedding_loss"]) > 0 and rows[1]["embedding_loss"] == ""  # the AED has an embedding loss
    assert (rows[0]["seed_val_loss"], rows[1]["seed_val_loss"]) == ("3.378", "3.424")

    md = (out / "results.md").read_text()
    assert "| run | status | steps | params | train loss | seed | val loss | seed |" in md
    assert "|   | Train loss | seed | Val loss | seed | Size (params) | seed |" in md
    for r in rows:
        line = next(line for line in md.splitlines() if line.startswith(f"| {r['label']} (`{r['run']}`)"))
        assert f"{float(r['train_loss']):.3f}" in line and f"{float(r['seed_val_loss']):.3f}" in line

    for name in ("embedding_loss", "baselines"):
        assert f"]({name}.png)" in md
        width, height = png_size(out / f"{name}.png")
        assert width > 600 and height > 300 and os.path.getsize(out / f"{name}.png") > 20_000

    for r in rows:  # run.json of each workdir
        assert os.path.isfile(out / r["run"] / "run.json")
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": skipped") == 2, again.stdout


def test_dataset_flag_names_the_corpus_and_the_default_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "wikipedia").mkdir(parents=True)
    for split in ("train", "val"):
        np.zeros(1000, np.uint16).tofile(tmp_path / "data" / "wikipedia" / f"wikipedia_{split}.bin")
    assert reproduce.data_override(None, "wikipedia") == {"dataset": "wikipedia"}  # data/wikipedia
    assert reproduce.data_override("data/wikipedia") == {"data_dir": "data/wikipedia", "dataset": "wikipedia"}
    assert reproduce.data_override(None) == {}  # the built-in corpus, prepared on first use
    with pytest.raises(reproduce.data.DataError, match="data/other/other_train.bin: no such file"):
        reproduce.data_override(None, "other")  # before any training
    assert reproduce.default_out("seed", "full", "wikipedia") == os.path.join("runs", "seed_full-wikipedia")
    (tmp_path / "data" / "wikipedia" / "meta.json").write_text('{"source": "Hugging Face dataset wikimedia/'
                                                               'wikipedia", "train": {"tokens": 900}}')
    c = reproduce.config_lib.base_config()
    c.update(reproduce.data_override(None, "wikipedia"))
    assert reproduce._data_text(c) == ("`data/wikipedia` (dataset `wikipedia`): Hugging Face dataset "
                                       "wikimedia/wikipedia; 900 train tokens")  # results.md names the corpus
    assert reproduce.default_out("seed", "mini") == os.path.join("runs", "seed_mini")


def test_rope_suite_pairs_each_model_with_and_without_position_subtraction():
    """RoPE AED and baseline, each with and without pos sub, beside the seed's learned-table pair."""
    configs = {run.name: run.make_config() for run in reproduce.SUITES["rope"].runs}
    m = {name: c.model_config for name, c in configs.items()}
    for name in ("rope", "rope_no_pos_sub", "rope_baseline", "rope_baseline_pos_sub"):
        assert m[name].position_embedding_type == "ROPE"
    assert m["mse_pos_sub"].position_embedding_type == m["baseline"].position_embedding_type == "LEARNED"
    assert m["rope"].sub_pos_embed_to_decoder == m["rope_baseline_pos_sub"].sub_pos_embed_to_decoder == "YES_NO_LN"
    assert m["rope_no_pos_sub"].sub_pos_embed_to_decoder == m["rope_baseline"].sub_pos_embed_to_decoder == "NO"
    assert {configs[n].model_type for n in ("rope", "rope_no_pos_sub")} == {"aed"}
    assert {configs[n].model_type for n in ("rope_baseline", "rope_baseline_pos_sub")} == {"baseline"}


def test_cli_reports_user_errors_in_one_line():
    for args, message in ((["--runs", "nope"], "unknown run 'nope'"),
                          (["--suite", "smoke", "--scale", "mini"], "--scale"),
                          (["--dataset", "not_prepared"], "data/not_prepared/not_prepared_train.bin: no such file")):
        result = subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1 and result.stderr.startswith("error:") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_colab_notebook_runs_headless_on_cpu(tmp_path, smoke):
    """Executes experiments/colab.ipynb with a tiny CPU setting injected after its parameters cell.

    Depends on `smoke` only so that it runs after it: the tiny config and its smoke overrides are
    the same, so the notebook's train step comes from the persistent compilation cache.
    """
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"CONFIG = 'configs/tiny.py'\nOVERRIDES = {reproduce.SMOKE_OVERRIDES!r}\nWORKDIR = {str(workdir)!r}\n"
        f"DATA_DIR = {str(data_dir)!r}\nEVAL_BATCHES = 2\nMAX_NEW_TOKENS = 5\nPROMPT = 'Paris is'",
        metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()

    text = lambda cell: "".join(o.get("text", "") for o in cell.get("outputs", []))
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "devices:" in "".join(map(text, code))
    assert os.path.isfile(data_dir / "wiki_vital_train.bin")  # the built-in corpus, really prepared
    assert "step 6: train loss" in "".join(map(text, code))
    assert png_size(workdir / "curves.png")[0] > 600
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for cell in code for o in cell.outputs)
    assert "ce_loss" in "".join(map(text, code)) and "perplexity" in "".join(map(text, code))
    assert text(code[-1]).startswith("Paris is") and len(text(code[-1]).strip()) > len("Paris is")


def test_colab_setup_cells_on_a_simulated_colab(tmp_path):
    """The notebook's Colab-only path without Colab, a network or pip: `google.colab` faked, a zip of a
    repository uploaded, pip recorded (its first call failing, as when the runtime's JAX is too old)."""
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    cells = {cell.id: cell.source for cell in nb.cells}
    (tmp_path / "uploads").mkdir()
    with zipfile.ZipFile(tmp_path / "uploads" / "aed_jax.zip", "w") as archive:  # GitHub's "Download ZIP" layout
        archive.writestr("aed_jax-main/setup.cfg", "[metadata]\nname = aed_jax\n")
        archive.writestr("aed_jax-main/aed_jax/__init__.py", "")
    record_pip = (
        "calls = []\n"
        "def fake_run(command, **kwargs):\n"
        "    constraints = open(command[command.index('-c') + 1]).read() if '-c' in command else None\n"
        "    calls.append((command[1:], constraints))\n"
        "    return subprocess.CompletedProcess(command, int(len(calls) == 1), '', 'ERROR: ResolutionImpossible')\n"
        "subprocess.run = fake_run")
    sources = [
        cells["parameters"],
        "import sys, types\ncolab = sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
        "colab.output = types.ModuleType('google.colab.output')  # jax's debugger imports it on Colab",
        cells["get-code"],  # 2: no REPO, no upload
        "os.replace('uploads/aed_jax.zip', 'aed_jax.zip')",
        cells["get-code"],  # 4: finds /content/aed_jax.zip (here tmp_path/aed_jax.zip)
        record_pip,
        cells["install"],  # 6
        "print(calls)",
        f"del sys.modules['google.colab']\nos.chdir({str(tmp_path)!r})",
        cells["get-code"],  # 9: outside Colab, not in a checkout
    ]
    run = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    NotebookClient(run, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def error(i):
        errors = [o for o in run.cells[i].outputs if o.output_type == "error"]
        return errors[0].traceback if errors else None

    assert error(2) == ["error: no code to install: set REPO in the parameters cell to a git URL, a .zip or a "
                        "folder of the repository, or upload aed_jax.zip to /content (the first cell says how)"]
    assert error(4) is None and run.cells[4].outputs[-1].text == f"code: {tmp_path}/aed_jax_repo/aed_jax-main\n"
    calls = ast.literal_eval(run.cells[7].outputs[0].text)  # [(command without python, constraints text)]
    versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib")}
    assert calls[0][0][:6] == ["-m", "pip", "install", "-q", "-e", "."] and calls[0][0][6] == "-c"
    assert {f"{name}=={v}" for name, v in versions.items()} <= set(calls[0][1].split())  # the runtime's JAX kept
    assert calls[1] == (["-m", "pip", "install", "-q", "-e", ".[cuda12]"], None)  # fallback: the CUDA 12 extra
    install_text = "".join(o.get("text", "") for o in run.cells[6].outputs)
    assert f"jax=={versions['jax']}, jaxlib=={versions['jaxlib']}" in install_text and "devices:" in install_text
    no_gpu = ["error: JAX sees no GPU: choose Runtime > Change runtime type > GPU (this restarts the runtime), "
              "then Runtime > Run all"]
    assert error(6) == (None if jax.default_backend() == "gpu" else no_gpu)
    assert error(9) == ["error: open this notebook from the aed_jax repository (or its experiments/ folder) after "
                        "pip install -e \".[dev]\""]
