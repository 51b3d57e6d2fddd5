"""Real package sets from PyPI with exact pins: each stack syncs, runs an import-and-compute
check inside its snapshot, and verifies at `full`.

Marked `pypi` and `corpus` (deselect with `-m "not corpus"`; skipped when PyPI is unreachable).
The volume's uv cache is kept between runs on the same machine (`VOLENV_CORPUS_ROOT`, set by
.ci/run) so the downloads are paid once; the snapshots themselves are rebuilt every run, so the
build code is what is tested, not a no-op sync of yesterday's snapshots.

Among them: pairs of distributions that ship the same file (issue 27: uv accepts them, so volenv
must), and the requirement sets of three public RunPod workers (runpod-workers/worker-template,
worker-faster_whisper, worker-infinity-embedding), whose whole dependency sets are imported by
`verify --imports`. The infinity worker's torch is this machine's CPU wheel; it is marked `heavy`
(about 100 s a run warm): `-m "corpus and not heavy"` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import pypi_reachable, volenv

pytestmark = [pytest.mark.slow, pytest.mark.pypi, pytest.mark.corpus]

# name -> (requirements, check run with the snapshot's python). Pins are exact; what they pull
# in is resolved by uv. Each check computes something with the package, not only imports it.
STACKS: dict[str, tuple[list[str], str]] = {
    "numpy126": (
        ["numpy==1.26.4"],  # ships numpy/distutils/__pycache__/*.pyc
        """
        import numpy as np
        a = np.arange(12, dtype=np.float64).reshape(3, 4)
        assert a.sum() == 66 and abs(np.linalg.det(np.eye(3) * 2) - 8) < 1e-9
        assert np.__version__ == "1.26.4"
        """,
    ),
    "fastapi-clash": (
        # both wheels declare a `fastapi` console script: uv keeps the last installer's, and the
        # other RECORD's hash for bin/fastapi is not damage (issue 27); with numpy 1.26.4's
        # shipped bytecode, whose check a refresh once tripped over
        ["fastapi==0.115.14", "fastapi-cli==0.0.7", "numpy==1.26.4"],
        """
        import os, shutil, sys
        import fastapi, fastapi_cli, numpy
        assert fastapi.__version__ == "0.115.14"
        assert os.path.exists(os.path.join(sys.prefix, "bin", "fastapi"))
        """,
    ),
    "numpy22": (
        ["numpy==2.2.6"],
        """
        import numpy as np
        rng = np.random.default_rng(0)
        m = rng.standard_normal((50, 50))
        assert np.allclose(m @ np.linalg.inv(m), np.eye(50), atol=1e-8)
        assert np.__version__ == "2.2.6"
        """,
    ),
    "scistack": (
        ["pandas==2.2.3", "scipy==1.14.1", "scikit-learn==1.5.2", "numpy==2.1.3"],
        """
        import numpy as np, pandas as pd
        from scipy import stats
        from sklearn.linear_model import LinearRegression
        df = pd.DataFrame({"x": np.arange(20.0)})
        df["y"] = 3 * df.x + 1
        m = LinearRegression().fit(df[["x"]], df.y)
        assert abs(m.coef_[0] - 3) < 1e-9 and abs(stats.norm.cdf(0) - 0.5) < 1e-12
        assert df.groupby(df.x % 2).y.sum().tolist() == [280.0, 310.0]
        """,
    ),
    "plotting": (
        ["matplotlib==3.9.2", "pillow==11.0.0"],
        """
        import io, matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from PIL import Image
        fig = plt.figure(figsize=(2, 1), dpi=50)
        plt.plot([0, 1], [1, 0])
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        buf.seek(0)
        assert Image.open(buf).size == (100, 50)
        """,
    ),
    "pydantic1": (
        ["pydantic==1.10.19"],
        """
        from pydantic import BaseModel, ValidationError
        class M(BaseModel):
            x: int
        assert M(x="3").x == 3
        try:
            M(x="no")
        except ValidationError:
            pass
        else:
            raise AssertionError("no validation")
        """,
    ),
    "pydantic2": (
        ["pydantic==2.10.3"],
        """
        import pydantic_core
        from pydantic import BaseModel
        class M(BaseModel):
            x: int
            tags: list[str] = []
        assert M.model_validate({"x": "4"}).model_dump() == {"x": 4, "tags": []}
        """,
    ),
    "web": (
        ["fastapi==0.115.6", "uvicorn[standard]==0.32.1", "httpx==0.28.1"],
        """
        import uvloop, httptools, uvicorn  # uvloop/httptools: the [standard] extra
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        app = FastAPI()
        @app.get("/sq/{n}")
        def sq(n: int) -> dict:
            return {"sq": n * n}
        assert TestClient(app).get("/sq/7").json() == {"sq": 49}
        uvicorn.Config(app, loop="uvloop", http="httptools").load()
        """,
    ),
    "nlp": (
        ["transformers==4.46.3", "tokenizers==0.20.3", "sentencepiece==0.2.0"],
        """
        import sentencepiece
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(["hello world", "hello there world"] * 50, trainers.BpeTrainer(
            vocab_size=60, special_tokens=["[UNK]"]))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok)
        assert fast.decode(fast("hello world")["input_ids"]).replace(" ", "") == "helloworld"
        assert sentencepiece.SentencePieceProcessor() is not None
        """,
    ),
    "sdist": (
        ["docopt==0.6.2"],  # published as an sdist only: uv builds it
        """
        from docopt import docopt
        assert docopt("Usage: prog <name> [--loud]", ["ada", "--loud"]) == {"<name>": "ada", "--loud": True}
        """,
    ),
    "datafiles": (
        # awscli's wheel carries .data/scripts (bin/aws), youtube_dl's .data/data (share/, etc/)
        ["awscli==1.36.20", "youtube_dl==2021.12.17"],
        """
        import os, subprocess, sys
        out = subprocess.run([os.path.join(sys.prefix, "bin", "aws"), "--version"],
                             capture_output=True, text=True, check=True)
        assert "aws-cli/1.36.20" in out.stdout + out.stderr
        assert os.path.isfile(os.path.join(sys.prefix, "share", "man", "man1", "youtube-dl.1"))
        """,
    ),
    "pthfile": (
        ["setuptools==75.6.0"],  # distutils-precedence.pth runs at every start
        """
        import os, site, sys
        sp = site.getsitepackages()[0]
        assert os.path.isfile(os.path.join(sp, "distutils-precedence.pth"))
        import distutils
        assert "setuptools" in distutils.__file__, distutils.__file__
        """,
    ),
    "consolescripts": (
        ["black==24.10.0"],
        """
        import os, subprocess, sys
        import black
        assert black.format_str("x = (1,2)", mode=black.Mode()) == "x = (1, 2)\\n"
        out = subprocess.run([os.path.join(sys.prefix, "bin", "black"), "--version"],
                             capture_output=True, text=True, check=True)
        assert "24.10.0" in out.stdout
        """,
    ),
    "requests": (
        ["requests==2.32.3"],
        """
        import os, requests, certifi
        p = requests.Request("GET", "http://example.invalid/a b", params={"q": "x y"}).prepare()
        assert p.url == "http://example.invalid/a%20b?q=x+y" and os.path.isfile(certifi.where())
        """,
    ),
    "yaml": (
        ["pyyaml==6.0.2"],
        """
        import yaml
        assert yaml.__with_libyaml__
        assert yaml.load("a: [1, 2]", Loader=yaml.CSafeLoader) == {"a": [1, 2]}
        """,
    ),
    "sqlalchemy": (
        ["sqlalchemy==2.0.36"],
        """
        from sqlalchemy import create_engine, text
        e = create_engine("sqlite://")
        with e.begin() as c:
            c.execute(text("create table t (x int)"))
            c.execute(text("insert into t values (1), (2), (3)"))
            assert c.execute(text("select sum(x) from t")).scalar() == 6
        """,
    ),
    "orjson": (
        ["orjson==3.10.12"],
        """
        import orjson
        assert orjson.loads(orjson.dumps({"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]}
        """,
    ),
    "lxml": (
        ["lxml==5.3.0"],
        """
        from lxml import etree
        t = etree.fromstring("<r><i n='1'/><i n='2'/></r>")
        assert [e.get("n") for e in t.xpath("//i")] == ["1", "2"]
        """,
    ),
    "opencv-clash": (
        # the headless and contrib-headless wheels both ship cv2/ (79 files, 7 of them different:
        # cv2.abi3.so, version.py, the .pyi stubs): uv writes both wheels in parallel, so which
        # one's file is left is not fixed, and a mix still loads (each .so finds its own .libs)
        ["opencv-python-headless==4.10.0.84", "opencv-contrib-python-headless==4.10.0.84", "numpy==2.1.3"],
        """
        import cv2, numpy as np
        img = np.zeros((32, 32), np.uint8)
        cv2.circle(img, (16, 16), 8, 255, -1)
        n, _ = cv2.connectedComponents(img)
        assert n == 2 and cv2.__version__ == "4.10.0", cv2.__version__
        """,
    ),
    "serial-clash": (
        # serial (a serialisation library) and pyserial both ship serial/__init__.py, whichever
        # uv wrote last is the package `import serial` gives; the rest of each is its own
        ["serial==0.0.97", "pyserial==3.5"],
        """
        import serial, serial.serialutil, serial.model
        assert serial.serialutil.to_bytes([1, 2]) == b"\\x01\\x02"
        """,
    ),
    "worker-template": (
        # runpod-workers/worker-template@03ea230 requirements.txt: runpod~=1.7.9
        ["runpod==1.7.13"],
        """
        import runpod, runpod.serverless
        from runpod.serverless.utils.rp_validator import validate
        out = validate({"n": 3}, {"n": {"type": int, "required": True}, "s": {"type": str,
                       "required": False, "default": "x"}})
        assert out["validated_input"] == {"n": 3, "s": "x"}, out
        """,
    ),
    "worker-faster-whisper": (
        # runpod-workers/worker-faster_whisper@bd500dc builder/requirements.txt
        ["runpod==1.7.13", "faster-whisper==1.1.0"],
        """
        import io, wave
        import ctranslate2, numpy as np, runpod
        from faster_whisper import decode_audio
        from faster_whisper.feature_extractor import FeatureExtractor
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
            t = np.arange(16000) / 16000
            w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
        buf.seek(0)
        audio = decode_audio(buf, sampling_rate=16000)  # through av (ffmpeg's libraries)
        assert audio.shape == (16000,) and abs(float(abs(audio).max()) - 8000 / 32768) < 0.01
        assert FeatureExtractor()(audio).shape[0] == 80
        assert ctranslate2.__version__
        """,
    ),
    "worker-infinity": (
        # runpod-workers/worker-infinity-embedding@8ef2eed requirements.txt: runpod~=1.7.0,
        # infinity-emb (here with the extras issue 27 names: it pulls fastapi 0.115.14 and
        # fastapi-cli 0.0.7, the bin/fastapi clash, and numpy 1.26.4) and einops; torch is
        # this machine's CPU wheel (find-links), not the worker's CUDA build
        [
            "runpod==1.7.13",
            "infinity-emb[torch,server,einops,logging]==0.0.76",
            "einops==0.8.0",
            "torch==2.13.0+cpu",
        ],
        """
        import einops, fastapi, numpy, runpod, sentence_transformers, torch
        import infinity_emb, infinity_emb.infinity_server
        from infinity_emb import EngineArgs
        x = torch.arange(24.0).reshape(2, 3, 4)
        assert einops.rearrange(x, "a b c -> (a b) c").shape == (6, 4)
        assert float(torch.nn.functional.normalize(torch.ones(4), dim=0).sum()) == 2.0
        assert fastapi.__version__ == "0.115.14" and numpy.__version__ == "1.26.4"
        assert EngineArgs(model_name_or_path="unused/model", engine="torch").engine.value == "torch"
        """,
    ),
    "jinja": (
        ["jinja2==3.1.4"],
        """
        import jinja2, markupsafe
        out = jinja2.Environment(autoescape=True).from_string("{{ x }}!").render(x="<b>")
        assert out == "&lt;b&gt;!"
        """,
    ),
}


# stacks whose manifest names this machine's CPU torch wheel folder as find-links (skipped where
# there is none: PyPI's torch is a multi-GB CUDA build)
LOCAL_TORCH = {"worker-infinity": "2.13.0"}
# stacks verified with --imports as well: every top-level module of every installed distribution
# imports (the RunPod workers' whole dependency sets, not only what the check touches)
IMPORT_ALL = {"worker-template", "worker-faster-whisper", "worker-infinity"}
# stacks over ~30 s a run on a warm cache: `-m "corpus and not heavy"` leaves them out
HEAVY = {"worker-infinity"}  # warm: sync ~71 s, check ~13 s, verify ~21 s (imports 14 s)

_RAN: list[str] = []  # stacks that got through, for the wall-time line


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Path]:
    if not pypi_reachable():
        pytest.skip("PyPI unreachable: the corpus installs real packages")
    kept = os.environ.get("VOLENV_CORPUS_ROOT")
    root = Path(kept) if kept else tmp_path_factory.mktemp("corpus") / "volenv"
    # Keep only uv's cache (and the interpreter dir) from an earlier run: every snapshot is
    # rebuilt, so the build is what the corpus tests.
    if root.exists():
        for child in root.iterdir():
            if child.name not in ("cache", "python"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    t0 = time.perf_counter()
    yield root
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capman = pytestconfig.pluginmanager.get_plugin("capturemanager")
    line = f"corpus: {len(_RAN)} stacks in {time.perf_counter() - t0:.1f} s wall (root {root})"
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():  # fixture teardown output is captured
            reporter.write_line("")
            reporter.write_line(line)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.heavy] if n in HEAVY else []) for n in sorted(STACKS)]
)
def test_real_stack_syncs_runs_and_verifies(
    name: str, corpus_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reqs, check = STACKS[name]
    manifest = tmp_path / f"{name}.toml"
    quoted = ", ".join(f'"{r}"' for r in reqs)
    # an id: the root is kept between runs, the manifest's temp folder is not (one project)
    text = f'id = "corpus/{name}"\nname = "{name}"\npython = "3.11"\nrequirements = [{quoted}]\n'
    if name in LOCAL_TORCH:
        from wheelfactory import local_torch_wheels

        wheels = local_torch_wheels(LOCAL_TORCH[name])
        if wheels is None:
            pytest.skip(f"no local CPU torch {LOCAL_TORCH[name]} wheel (pip config find-links)")
        text += f"\n[index]\nfind-links = [{json.dumps(str(wheels))}]\n"
    manifest.write_text(text)
    env = {"MPLCONFIGDIR": str(tmp_path / "mpl"), "HOME": str(tmp_path)}
    t0 = time.perf_counter()
    r = volenv("--root", corpus_root, "sync", manifest, timeout=1200, env=env)
    assert r.returncode == 0, f"sync {name}: {r.stderr[-3000:]}"
    t_sync = time.perf_counter() - t0
    code = textwrap.dedent(check)
    r = volenv("--root", corpus_root, "run", "--env", name, "--", "python", "-c", code, timeout=600, env=env)
    assert r.returncode == 0, f"check {name}: {r.stderr[-3000:]}"
    t1 = time.perf_counter()
    imports = ["--imports"] if name in IMPORT_ALL else []
    r = volenv("--root", corpus_root, "verify", name, "--level", "full", *imports, timeout=600)
    assert r.returncode == 0, f"verify {name}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    _RAN.append(name)
    with capsys.disabled():
        print(
            f"  [{name}: sync {t_sync:.1f} s, check {t1 - t0 - t_sync:.1f} s, verify {time.perf_counter() - t1:.1f} s]",
            end="",
        )
