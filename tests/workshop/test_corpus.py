"""specviz.workshop.corpus: file filters, the stable hash split, licence checks and the manifest (no network)."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np

from specviz.workshop import corpus
from specviz.workshop.corpus import CorpusConfig, Package


def test_path_filter_drops_tests_and_vendored_copies():
    keep = ["numpy/linalg/linalg.py", "django/db/models/query.py", "click/core.py", "pkg/testing.py", "pkg/contest.py"]
    drop = [
        "numpy/linalg/tests/test_linalg.py",
        "pkg/test/helpers.py",
        "pkg/test_core.py",
        "pkg/core_test.py",
        "pkg/conftest.py",
        "setuptools/_vendor/packaging/version.py",
        "sklearn/externals/_packaging/version.py",
        "pkg/vendor/six.py",
        "pkg/third_party/x.py",
        "astropy/extern/ply/lex.py",
        "pkg/data.json",
        "pkg/mod.pyi",
    ]
    assert all(corpus.path_ok(p) for p in keep)
    assert not any(corpus.path_ok(p) for p in drop)


def test_text_filter_drops_tiny_huge_and_generated_files():
    cfg = CorpusConfig(max_file_bytes=2000)
    normal = "def f(x):\n    '''Double x.'''\n    return 2 * x\n" * 10
    assert corpus.text_ok(normal, cfg)
    assert not corpus.text_ok("x = 1\n", cfg)  # tiny
    assert not corpus.text_ok(normal * 20, cfg)  # over max_file_bytes
    generated = "TABLE = [\n" + ("    " + "1, " * 200 + "\n") * 5 + "]\n"
    assert not corpus.text_ok(generated, CorpusConfig())


def test_hash_split_is_stable_and_depends_on_content_only():
    text = "def answer():\n    return 42\n"
    expected = int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) % 1000
    assert corpus.content_bucket(text) == expected
    assert corpus.is_heldout(text, 0.02) == (expected < 20)
    texts = [f"x = {i}\n" * 20 for i in range(400)]
    first = [corpus.is_heldout(t, 0.05) for t in texts]
    assert first == [corpus.is_heldout(t, 0.05) for t in texts]
    assert 0 < sum(first) < 60  # roughly 5 %
    # the old stdlib rule: a hash of the file NAME, as train.read_corpus does it
    for name in ("os.py", "json.py", "argparse.py"):
        assert corpus.old_stdlib_heldout(name) == (int(hashlib.sha1(name.encode()).hexdigest(), 16) % 1000 < 30)


def test_licence_check():
    assert corpus.licence_ok("MIT", "MIT")
    assert corpus.licence_ok("BSD-3-Clause", "BSD-3-Clause")
    assert corpus.licence_ok("BSD-3-Clause", "BSD License")
    assert not corpus.licence_ok("MIT", "Apache-2.0")
    assert not corpus.licence_ok("BSD-2-Clause", "Public Domain; BSD License; GNU General Public License (GPL)")
    assert all(p.licence in corpus.SPDX_FAMILY for p in corpus.PACKAGES)
    assert len({p.name for p in corpus.PACKAGES}) == len(corpus.PACKAGES)


def test_split_documents_dedups_and_keeps_forced_splits():
    a, b = "a = 1\n" * 30, "b = 2\n" * 30
    splits, stats = corpus.split_documents(
        [
            ("stdlib", [("a.py", a, None), ("old.py", b, "heldout_stdlib")]),
            ("pkg", [("pkg/a.py", a, None), ("pkg/b.py", b, None)]),
        ]
    )
    assert splits["heldout_stdlib"] == [b]
    assert sorted(splits["train"] + splits["heldout"]) == [a]
    assert stats["pkg"]["duplicates"] == 2 and stats["pkg"]["files"] == 0


def _fake_wheel(path, name, version, licence_expression):
    body = "\n".join(f"def f{i}(x):\n    '''Return x plus {i}.'''\n    return x + {i}\n" for i in range(20))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            f"{name}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\nLicense-Expression: {licence_expression}\n",
        )
        z.writestr(f"{name}/__init__.py", body)
        z.writestr(f"{name}/core.py", body.replace("plus", "and"))
        z.writestr(f"{name}/tests/test_core.py", body + "\n# test\n")
        z.writestr(f"{name}/_vendor/six.py", body + "\n# vendored\n")


def test_build_corpus_writes_streams_and_manifest(tmp_path, tiny_tokenizer):
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    _fake_wheel(wheels / "fakepkg-1.0-py3-none-any.whl", "fakepkg", "1.0", "MIT")
    _fake_wheel(wheels / "gplpkg-2.0-py3-none-any.whl", "gplpkg", "2.0", "GPL-3.0-only")
    tree = tmp_path / "tree"
    (tree / "tests").mkdir(parents=True)
    (tree / "mod.py").write_text("class A:\n    '''An A.'''\n    def go(self):\n        return 'go'\n" * 5)
    (tree / "tests" / "test_mod.py").write_text("def test():\n    assert True\n" * 10)
    out = tmp_path / "built"
    logged = []
    manifest = corpus.build_corpus(
        out,
        tiny_tokenizer,
        (Package("fakepkg", "1.0", "MIT"), Package("gplpkg", "2.0", "MIT")),
        tmp_path / "cache",
        corpus_dir=tree,
        include_stdlib=False,
        log=logged.append,
    )
    assert any("gplpkg" in line and "dropped" in line for line in logged)
    assert [p["name"] for p in manifest["packages"]] == ["fakepkg"]
    row = manifest["packages"][0]
    assert (row["version"], row["licence"], row["declared_licence"], row["files"]) == ("1.0", "MIT", "MIT", 2)
    assert manifest["files"] == 3 and manifest["bytes"] > 0
    streams, again = corpus.load_corpus(out)
    assert again == json.loads((out / "manifest.json").read_text())
    assert sum(len(v) for v in streams.values()) == sum(manifest["tokens"].values()) > 0
    assert all(v.dtype == np.uint16 for v in streams.values())
    assert "fakepkg" in corpus.licence_table(manifest)


def test_window_stream_resumes_where_it_stopped():
    from specviz.workshop.continued import ContinueConfig, WindowStream, curriculum_seq_len, wsd_lr

    stream = np.arange(10_000, dtype=np.uint16)
    a = WindowStream(stream, seed=3)
    first = [a.next(64, 4) for _ in range(3)]
    b = WindowStream(stream, seed=3, state=a.state)
    c = WindowStream(stream, seed=3)
    [c.next(64, 4) for _ in range(3)]
    assert bool((b.next(64, 4) == c.next(64, 4)).all())
    assert first[0].shape == (4, 65) and bool((first[0][:, 1:] - first[0][:, :-1] == 1).all())
    ccfg = ContinueConfig(total_tokens=1000)
    assert [curriculum_seq_len(ccfg, t) for t in (0, 299, 300, 560, 999)] == [256, 256, 512, 1024, 2048]
    assert wsd_lr(ccfg, 0, 0) < wsd_lr(ccfg, 500, 500) == ccfg.peak_lr > wsd_lr(ccfg, 900, 1000)
