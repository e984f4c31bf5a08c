"""The dev models (devmodel/): their weights are the committed ones, bit for bit, and nothing else is loaded as them.

Every measure and test threshold on the trained models (tests/test_toymodel*.py, test_charmodel.py,
test_profiles_trained.py) is of these files; TRAINING.md of each model records how they were made and the same
sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from devmodel import model
from devmodel.char import MODEL as CHAR
from devmodel.toy import MODEL as TOY

COMMITTED = {  # sha256 of the weights as trained (devmodel/*/TRAINING.md)
    "toy": "47e65bf2e5d7a2a865da84781a3a8f43c18c1b4b14b2f6a54bf13f7c1b0b6f99",
    "char": "8873ed878250c74e58f6913f6bdeb49ed1f5dca9d9e181f023f13b79ca8d29e7",
}


@pytest.mark.parametrize("dev", [TOY, CHAR], ids=lambda dev: dev.name)
def test_the_weights_are_the_committed_ones(dev):
    assert hashlib.sha256(dev.weights.read_bytes()).hexdigest() == COMMITTED[dev.name] == dev.sha256
    assert dev.weights.name in dev.weights.parent.joinpath("TRAINING.md").read_text(encoding="utf-8")
    assert COMMITTED[dev.name] in dev.weights.parent.joinpath("TRAINING.md").read_text(encoding="utf-8")


def test_other_weights_are_not_loaded_as_the_committed_model():
    with pytest.raises(ValueError, match="is not the committed toy model"):
        model.load(dataclasses.replace(TOY, sha256="0" * 64))
