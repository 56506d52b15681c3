"""Mixed precision and channels_last as fastai callbacks, for any device (the choice: device.precision_for)."""

from __future__ import annotations

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.torch_core import L


class DeviceMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision (autocast around the forward pass and the loss; GradScaler for fp16) on the
    learner's own device: fastai's always autocasts for CUDA, so `learn.to_bf16()` trains a CPU run in fp32."""

    def __init__(self, amp_mode: str, device_type: str):
        super().__init__(amp_mode)
        self.device_type = device_type

    def before_fit(self):
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        self.kwargs["enabled"] = dtype == torch.float16  # fp16's narrow range needs loss scaling, bf16's does not
        self.autocast = torch.autocast(self.device_type, dtype=dtype)
        self.learn.scaler, self.scales = torch.amp.GradScaler(self.device_type, **self.kwargs), L()
        resumed = getattr(self.learn, "resumed_scaler", None)  # checkpoint.load_last: fp16's loss scale goes on
        if resumed:
            self.learn.scaler.load_state_dict(resumed)
            self.learn.resumed_scaler = None


class ChannelsLastBatches(ChannelsLast):
    """fastai's ChannelsLast (the model's weights in NHWC), with each batch in NHWC too, so no layer pays
    for a conversion."""

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                              for x in self.xb)
