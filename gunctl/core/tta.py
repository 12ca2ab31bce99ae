"""Horizontal-flip test-time augmentation: detect on the image and its mirror, fuse the boxes.

``FlipTTA`` wraps a detector: in eval mode it runs both views and fuses their detections by
weighted box fusion (Solovyev et al., 2021: boxes of one cluster averaged by score, the score
averaged over the views, so a box that only one view found counts half); in train mode (the
validation-loss pass) it is the plain model.
"""

from __future__ import annotations

import torch
from torch import nn

FUSION_IOU = 0.55  # boxes of the two views overlapping this much are one detection (WBF's)


class FlipTTA(nn.Module):
    def __init__(self, model: nn.Module, iou_threshold: float = FUSION_IOU):
        super().__init__()
        self.model, self.iou_threshold = model, iou_threshold

    def forward(self, images, targets=None):
        if self.training:
            return self.model(images, targets)
        from gunctl.core.forward import detections

        plain = detections(self.model, images)
        mirrored = detections(self.model, [image.flip(-1) for image in images])
        fused = []
        for image, a, b in zip(images, plain, mirrored, strict=True):
            width = image.shape[-1]
            boxes = b["boxes"].clone()
            boxes[:, 0], boxes[:, 2] = width - b["boxes"][:, 2], width - b["boxes"][:, 0]
            fused.append(weighted_box_fusion([a, {**b, "boxes": boxes}], self.iou_threshold))
        return fused


def weighted_box_fusion(views: list[dict], iou_threshold: float = FUSION_IOU) -> dict:
    """Fuse the detections (boxes, scores, labels) of several views of one image."""
    from torchvision.ops import box_iou

    boxes = torch.cat([v["boxes"].float() for v in views])
    scores = torch.cat([v["scores"].float() for v in views])
    labels = torch.cat([v["labels"] for v in views])
    clusters: list[list[int]] = []
    fused_boxes: list[torch.Tensor] = []
    for index in scores.argsort(descending=True).tolist():
        match = -1
        if fused_boxes:
            candidates = torch.stack(fused_boxes)
            iou = box_iou(boxes[index : index + 1], candidates)[0]
            same = torch.tensor([int(labels[c[0]]) == int(labels[index]) for c in clusters])
            iou = torch.where(same, iou, torch.zeros_like(iou))
            best = int(iou.argmax())
            match = best if iou[best] > iou_threshold else -1
        if match < 0:
            clusters.append([index])
            fused_boxes.append(boxes[index])
        else:
            clusters[match].append(index)
            members = torch.tensor(clusters[match])
            weights = scores[members]
            fused_boxes[match] = (boxes[members] * weights[:, None]).sum(0) / weights.sum()
    if not clusters:
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
    fused_scores = torch.stack(
        [scores[torch.tensor(c)].sum() / max(len(views), len(c)) for c in clusters]
    )
    order = fused_scores.argsort(descending=True)
    return {
        "boxes": torch.stack(fused_boxes)[order],
        "scores": fused_scores[order],
        "labels": torch.stack([labels[c[0]] for c in clusters])[order],
    }
