"""--arch without the timm extra: torchvision still works, a timm name says how to install timm."""

from __future__ import annotations

import sys

import pytest

from trainer.errors import BadInput
from trainer.model.arch import resolve_arch


def test_timm_names_need_the_timm_extra(monkeypatch):
    assert resolve_arch("tf_efficientnet_lite0") == "tf_efficientnet_lite0"  # timm installed: passed through
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    assert callable(resolve_arch("resnet18"))
    with pytest.raises(BadInput, match=r"or install timm \(pip install 'trainer\[timm\]'\) for its models"):
        resolve_arch("tf_efficientnet_lite0")
