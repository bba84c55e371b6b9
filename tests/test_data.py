"""Corpora, splits and batches."""

import os
import sysconfig

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pe_jax import data

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                           "tinyshakespeare", "input.txt")


def test_stdlib_corpus_has_no_tests_or_site_packages_and_a_stable_split():
    files = data.stdlib_files()
    assert len(files) > 300
    for path in files:
        parts = path.split(os.sep)
        assert not {"site-packages", "test", "tests"} & set(parts), path
        assert path.endswith(".py")
    assert "os.py" in files and "json/decoder.py" in files

    val_files = [f for f in files if data.is_validation_file(f)]
    assert 0.02 < len(val_files) / len(files) < 0.10
    corpus = data.load("stdlib")
    root = sysconfig.get_paths()["stdlib"]
    val_bytes = sum(os.path.getsize(os.path.join(root, f)) for f in val_files)
    assert len(corpus.val) == val_bytes
    assert len(corpus.train) + len(corpus.val) == sum(
        os.path.getsize(os.path.join(root, f)) for f in files
    )
    again = data.load("stdlib")
    np.testing.assert_array_equal(again.val[:10000], corpus.val[:10000])


def test_text_file_is_read_as_bytes_and_split_at_the_end(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 40)
    corpus = data.load(f"text:{path}")
    assert corpus.train.dtype == np.uint8
    assert len(corpus.train) == 9216 and len(corpus.val) == 1024
    np.testing.assert_array_equal(corpus.val[:3], [0, 1, 2])


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason="shared data not present")
def test_tinyshakespeare_loads():
    corpus = data.load(f"text:{SHAKESPEARE}")
    assert bytes(corpus.train[:9]) == b"First Cit"


def test_tfds_dataset_is_read_through_data_source():
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        corpus = data.load("tfds:tiny_shakespeare")
    assert corpus.name == "tfds:tiny_shakespeare"
    assert len(corpus.train) > 6 and len(corpus.val) > 6
    assert corpus.train.tolist().count(ord("\n")) >= 6  # one line per example at least


@pytest.mark.parametrize(
    "spec, message",
    [("wikipedia", "unknown dataset 'wikipedia'; accepted: stdlib, text:PATH, tfds:NAME"),
     ("text:/no/such/file", "does not exist"),
     ("tfds:no_such_dataset_xyz", "unknown tfds dataset 'no_such_dataset_xyz'")],
)
def test_unknown_datasets_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        data.load(spec)


def test_train_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(5000, dtype=np.int64).astype(np.uint8)
    a = data.train_batch(tokens, 7, 4, 32, seed=1)
    b = data.train_batch(tokens, 7, 4, 32, seed=1)
    c = data.train_batch(tokens, 8, 4, 32, seed=1)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], c["inputs"])
    np.testing.assert_array_equal(a["targets"][:, :-1], a["inputs"][:, 1:])
    assert a["positions"].dtype == np.int32 and a["positions"][2].tolist() == list(range(32))
