"""Training-mode outputs: main logits for the strategy, auxiliary heads in the loss."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn

from widthsearch.errors import ModelError
from widthsearch.train.outputs import AuxLoss, MainLogits, split_outputs

GoogLeNetOutputs = collections.namedtuple("GoogLeNetOutputs",
                                          ["logits", "aux_logits2", "aux_logits1"])
InceptionOutputs = collections.namedtuple("InceptionOutputs", ["logits", "aux_logits"])


class _Heads(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.main, self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> object:
        if self.kind == "googlenet" and self.training:
            return GoogLeNetOutputs(self.main(x), self.a(x), self.b(x))
        if self.kind == "inception" and self.training:
            return InceptionOutputs(self.main(x), self.a(x))
        return self.main(x)


def test_plain_logits_pass_through() -> None:
    logits = torch.randn(2, 3)
    assert split_outputs(logits) == (logits, [])


@pytest.mark.parametrize("kind, weights", [("googlenet", [0.3, 0.3]), ("inception", [0.4])])
def test_aux_heads_are_weighted_as_in_their_papers(kind: str, weights: list[float]) -> None:
    torch.manual_seed(0)
    model = _Heads(kind).train()
    net = MainLogits(model)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    ce = nn.CrossEntropyLoss()
    loss = AuxLoss(ce, net)(net(x), y)
    heads = [model.b, model.a] if kind == "googlenet" else [model.a]
    expected = ce(model.main(x), y) + sum(w * ce(h(x), y) for w, h in
                                          zip(weights, heads, strict=True))
    torch.testing.assert_close(loss, expected)
    assert net.pending == []  # consumed: the next forward starts clean
    model.eval()
    torch.testing.assert_close(net(x), model.main(x))


def test_inception_without_aux_head() -> None:
    logits = torch.randn(2, 3)
    assert split_outputs(InceptionOutputs(logits, None)) == (logits, [])


def test_other_outputs_are_one_clear_error() -> None:
    with pytest.raises(ModelError, match="wrap the model so its forward returns the logits"):
        split_outputs({"logits": torch.randn(2, 3)})
