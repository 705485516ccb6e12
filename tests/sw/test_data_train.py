"""Data sets (fixed split, deterministic images) and the train command."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitaccel.sw import data
from vitaccel.sw.cli import main
from vitaccel.sw.models.zoo import DIGITS_CHECKPOINT


def test_digits_split_is_fixed_and_disjoint():
    train, test = data.digits("train"), data.digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 449
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.float32
    assert -1.0 <= train.images.min() and train.images.max() <= 1.0
    again = data.digits("test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)
    flat_train = {row.tobytes() for row in train.images.reshape(len(train), -1)}
    overlap = sum(row.tobytes() in flat_train for row in test.images.reshape(len(test), -1))
    assert overlap < 5  # the digits set has a few exact duplicate images, no shared indices
    assert set(np.unique(test.labels)) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        data.digits("validation")


def test_generated_images_are_deterministic():
    a = data.generated_images(3, (3, 32, 32), seed=5)
    b = data.generated_images(3, (3, 32, 32), seed=5)
    c = data.generated_images(3, (3, 32, 32), seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.labels is None and 0.5 < a.images.std() < 1.5


def test_shipped_checkpoint_is_small():
    assert DIGITS_CHECKPOINT.is_file() and DIGITS_CHECKPOINT.stat().st_size < 1 << 20


def test_train_command_writes_a_checkpoint(tmp_path, capsys):
    output = tmp_path / "d.pt"
    assert main(["train", "digits-vit", "--epochs", "1", "-o", str(output), "--quiet"]) == 0
    state = torch.load(output, weights_only=True)
    assert "blocks.3.mlp.fc2.weight" in state
    assert "test top-1" in capsys.readouterr().err


def test_train_command_rejects_bad_input(capsys):
    assert main(["train", "deit-small", "--epochs", "1", "--quiet"]) == 2
    assert "only digits-vit" in capsys.readouterr().err
    assert main(["train", "digits-vit", "--epochs", "0", "--quiet"]) == 2
