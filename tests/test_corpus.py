"""Real package sets from PyPI with exact pins: each stack syncs, runs an import-and-compute
check inside its snapshot, and verifies at `full`.

Marked `pypi` and `corpus` (deselect with `-m "not corpus"`; skipped when PyPI is unreachable).
The volume's uv cache is kept between runs on the same machine (`VOLENV_CORPUS_ROOT`, set by
.ci/run) so the downloads are paid once; the snapshots themselves are rebuilt every run, so the
build code is what is tested, not a no-op sync of yesterday's snapshots.
"""

from __future__ import annotations

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
    "jinja": (
        ["jinja2==3.1.4"],
        """
        import jinja2, markupsafe
        out = jinja2.Environment(autoescape=True).from_string("{{ x }}!").render(x="<b>")
        assert out == "&lt;b&gt;!"
        """,
    ),
}


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


@pytest.mark.parametrize("name", sorted(STACKS))
def test_real_stack_syncs_runs_and_verifies(
    name: str, corpus_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reqs, check = STACKS[name]
    manifest = tmp_path / f"{name}.toml"
    quoted = ", ".join(f'"{r}"' for r in reqs)
    manifest.write_text(f'name = "{name}"\npython = "3.11"\nrequirements = [{quoted}]\n')
    env = {"MPLCONFIGDIR": str(tmp_path / "mpl"), "HOME": str(tmp_path)}
    t0 = time.perf_counter()
    r = volenv("--root", corpus_root, "sync", manifest, timeout=1200, env=env)
    assert r.returncode == 0, f"sync {name}: {r.stderr[-3000:]}"
    t_sync = time.perf_counter() - t0
    code = textwrap.dedent(check)
    r = volenv("--root", corpus_root, "run", "--env", name, "--", "python", "-c", code, timeout=600, env=env)
    assert r.returncode == 0, f"check {name}: {r.stderr[-3000:]}"
    t1 = time.perf_counter()
    r = volenv("--root", corpus_root, "verify", name, "--level", "full", timeout=600)
    assert r.returncode == 0, f"verify {name}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    _RAN.append(name)
    with capsys.disabled():
        print(
            f"  [{name}: sync {t_sync:.1f} s, check {t1 - t0 - t_sync:.1f} s, verify {time.perf_counter() - t1:.1f} s]",
            end="",
        )
