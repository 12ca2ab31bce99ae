"""The detector's forward pass for inference, written once for eager PyTorch, TorchScript and
ONNX tracing, so that `gunctl predict` and the exported files compute the same thing.

torchvision resizes in double precision in eager mode and in float32 when scripted or traced,
which can make an image 1 px smaller in one than in the other (and the detections differ).
Here every mode resizes with the float32 rule, then runs torchvision's own normalisation,
batching, backbone, RPN, RoI heads and box rescaling.
"""

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import _get_shape_onnx


def resize_for_model(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Scale a CxHxW float image so its short side is ``min_size`` and its long side at most
    ``max_size`` (torchvision's rule: a float32 scale, sizes floored in double precision)."""
    if torchvision._is_tracing():
        return _resize_traced(image, min_size, max_size)
    shape = torch.tensor(image.shape[-2:])
    short = torch.min(shape).to(dtype=torch.float32)
    long = torch.max(shape).to(dtype=torch.float32)
    scale = torch.min(float(min_size) / short, float(max_size) / long)
    return torch.nn.functional.interpolate(
        image[None],
        scale_factor=scale.item(),
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )[0]


@torch.jit.unused
def _resize_traced(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """The same sizes as ``resize_for_model`` computed in the graph, for ONNX: onnxruntime's
    own rounding of a scale can give an image 1 px smaller than PyTorch's."""
    shape = _get_shape_onnx(image)
    scale = torch.min(
        float(min_size) / torch.min(shape).to(torch.float32),
        float(max_size) / torch.max(shape).to(torch.float32),
    )
    size = torch.floor(shape.to(torch.float64) * scale.to(torch.float64)).to(torch.int64)
    return torch.nn.functional.interpolate(
        image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False
    )[0]


class Detect(nn.Module):
    """Eval-mode detections for float CxHxW images in [0, 1]; boxes in their own pixels.

    A module (not a function) so that TorchScript can compile it with the model inside.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        model = self.model
        transform = model.transform
        min_size, max_size = int(transform.min_size[-1]), int(transform.max_size)
        original: list[tuple[int, int]] = []
        resized: list[Tensor] = []
        for image in images:
            original.append((image.shape[-2], image.shape[-1]))
            resized.append(resize_for_model(transform.normalize(image), min_size, max_size))
        sizes: list[tuple[int, int]] = [(im.shape[-2], im.shape[-1]) for im in resized]
        batch = ImageList(transform.batch_images(resized, transform.size_divisible), sizes)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features, None)
        found, _ = model.roi_heads(features, proposals, batch.image_sizes, None)
        return transform.postprocess(found, batch.image_sizes, original)
