"""Pruning of float PyTorch ViTs: N:M weight sparsity, attention-head removal, token pruning.

* :mod:`.nm` -- magnitude N:M pruning of the blocks' linear layers, masks kept for fine-tuning.
* :mod:`.heads` -- head importance (weight norm, calibration loss) and head removal.
* :mod:`.tokens` -- EViT/SPViT token pruning between blocks, and executed-MAC counting.
* :mod:`.finetune` -- a few epochs of digits fine-tuning that keeps N:M masks fixed.
"""

from .finetune import finetune_digits
from .heads import HeadPrunedAttention, head_scores_l2, head_scores_loss, prune_heads
from .nm import NMMasks, prune_nm
from .tokens import TokenPruningViT, count_macs, default_pruning_points

__all__ = ["prune_nm", "NMMasks", "head_scores_l2", "head_scores_loss", "prune_heads",
           "HeadPrunedAttention", "TokenPruningViT", "count_macs", "default_pruning_points",
           "finetune_digits"]
