"""Output heads: one shared head, or one head per task stored as a single linear layer."""

from __future__ import annotations

import torch
from torch import nn


class TaskHeads(nn.Module):
    """``num_tasks`` heads of ``num_classes`` outputs each, computed by one matrix multiply.

    Without a task id (a single head) it is a plain linear layer. With per-sample task ids it
    returns each sample's own head, gathered on the device with no loop over tasks.
    """

    def __init__(self, in_features: int, num_classes: int, num_tasks: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.num_tasks = num_tasks
        self.linear = nn.Linear(in_features, num_classes * num_tasks)

    def forward(self, features: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        out = self.linear(features)
        if self.num_tasks == 1:
            return out
        if task is None:
            raise ValueError("a multi-head model needs the task id of every sample")
        out = out.view(out.shape[0], self.num_tasks, self.num_classes)
        index = task.view(-1, 1, 1).expand(-1, 1, self.num_classes)
        return out.gather(1, index).squeeze(1)
